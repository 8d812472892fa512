"""The OAuth 2.0 token and revocation endpoints (RFC 6749, RFC 7009): form bodies, JSON out."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GrantType = Literal["password", "refresh_token", "client_credentials"]


class FormModel(BaseModel):
    """Base of form-encoded requests: every value is text; unknown parameters are ignored
    (RFC 6749 §3.2)."""

    model_config = ConfigDict(extra="ignore", str_max_length=4096)


class TokenRequest(FormModel):
    """`application/x-www-form-urlencoded` parameters of `POST /oauth/token`."""

    grant_type: str = Field(
        min_length=1, description="`password`, `refresh_token` or `client_credentials`"
    )
    username: str | None = Field(default=None, description="password grant: email or username")
    password: str | None = Field(default=None, description="password grant")
    refresh_token: str | None = Field(default=None, description="refresh_token grant")
    scope: str | None = Field(
        default=None, description="space-separated scopes; absent means all that are allowed"
    )
    client_id: str | None = Field(
        default=None, description="client authentication in the body (HTTP Basic is preferred)"
    )
    client_secret: str | None = Field(default=None, description="see `client_id`")


class RevokeRequest(FormModel):
    """Parameters of `POST /oauth/revoke` (RFC 7009 §2.1)."""

    token: str = Field(min_length=1, description="an access token or a refresh token")
    token_type_hint: str | None = Field(
        default=None, description="`access_token` or `refresh_token`; only a hint"
    )
    client_id: str | None = None
    client_secret: str | None = None


class TokenOut(BaseModel):
    """A successful token response (RFC 6749 §5.1)."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105
    expires_in: int = Field(description="seconds until the access token expires")
    refresh_token: str | None = Field(
        default=None, description="password and refresh_token grants only; single use"
    )
    scope: str = Field(description="the scopes granted, space-separated")


class OAuthErrorOut(BaseModel):
    """An error response (RFC 6749 §5.2)."""

    error: Literal[
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
    ]
    error_description: str


# OpenAPI examples of the models above; the views attach them to their operations.
TOKEN_EXAMPLE: dict[str, Any] = {
    "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    "token_type": "Bearer",
    "expires_in": 900,
    "refresh_token": "8xLOxBtZp8...",
    "scope": "articles:read articles:write",
}
