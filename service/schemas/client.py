"""API clients: `{"client": {...}}` in, `{"client": {...}}` / `{"clients": [...]}` out."""

from __future__ import annotations

from typing import Annotated, Any, cast

from pydantic import AfterValidator, Field, JsonValue, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from service.domain import scopes as scopes_service
from service.models import ApiClient
from service.schemas.common import NOT_BLANK_PATTERN, InModel, OutModel, Timestamp, no_nul

_CLIENT_SCOPES = cast(
    "list[JsonValue]", sorted(scopes_service.ALL - scopes_service.NOT_FOR_CLIENTS)
)
ClientName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100, pattern=NOT_BLANK_PATTERN),
    AfterValidator(no_nul),
]


class ClientCreate(InModel):
    """A name for people and the scopes the client's tokens may carry."""

    name: ClientName = Field(examples=["nightly export"])
    scopes: list[str] = Field(
        min_length=1,
        max_length=len(scopes_service.ALL),
        json_schema_extra={
            "items": {"type": "string", "enum": _CLIENT_SCOPES},
            "uniqueItems": True,
        },
        examples=[["articles:read"]],
    )

    @field_validator("scopes")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise PydanticCustomError("unique_items", "each scope may be listed once")
        return value


class ClientCreateRequest(InModel):
    """`{"client": {"name", "scopes"}}`."""

    client: ClientCreate


class ClientOut(OutModel):
    """A client as its owner sees it (never its secret)."""

    client_id: str = Field(alias="clientId", examples=["cl_3kTMd0mJ3o9YJz6Q2p1qXw"])
    name: str = Field(examples=["nightly export"])
    scopes: list[str] = Field(examples=[["articles:read"]])
    created_at: Timestamp = Field(alias="createdAt")
    last_used_at: Timestamp | None = Field(alias="lastUsedAt")

    @classmethod
    def of(cls, client: ApiClient) -> ClientOut:
        """The owner's view of `client`."""
        return cls(
            client_id=client.client_id,
            name=client.name,
            scopes=client.scope.split(),
            created_at=client.created_at,
            last_used_at=client.last_used_at,
        )


class ClientCreatedOut(ClientOut):
    """A new client with its secret: shown once, stored only as a hash."""

    client_secret: str = Field(alias="clientSecret", examples=["cs_Zm9vYmFyYmF6..."])


class ClientResponse(OutModel):
    """`{"client": {...}}`."""

    client: ClientCreatedOut


class ClientListResponse(OutModel):
    """`{"clients": [...], "clientsCount": n}`."""

    clients: list[ClientOut]
    clients_count: int = Field(alias="clientsCount")


# OpenAPI examples of the models above; the views attach them to their operations.
CLIENT_EXAMPLE: dict[str, Any] = {
    "clientId": "cl_3kTMd0mJ3o9YJz6Q2p1qXw",
    "name": "nightly export",
    "scopes": ["articles:read"],
    "createdAt": "2026-01-02T03:04:05.678Z",
    "lastUsedAt": None,
}
CLIENT_RESPONSE_EXAMPLE: dict[str, Any] = {
    "client": {**CLIENT_EXAMPLE, "clientSecret": "cs_Zm9vYmFy..."}
}
CLIENTS_RESPONSE_EXAMPLE: dict[str, Any] = {"clients": [CLIENT_EXAMPLE], "clientsCount": 1}
CLIENT_CREATE_EXAMPLE: dict[str, Any] = {
    "client": {"name": "nightly export", "scopes": ["articles:read"]}
}
