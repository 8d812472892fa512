"""API clients of the current user: create (secret shown once), list, delete."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.api.idempotency import idempotent
from service.api.spec import body_of, operation
from service.domain import scopes
from service.infra.db import db
from service.models import User
from service.schemas.client import (
    CLIENT_CREATE_EXAMPLE,
    CLIENT_RESPONSE_EXAMPLE,
    CLIENTS_RESPONSE_EXAMPLE,
    ClientCreatedOut,
    ClientCreateRequest,
    ClientListResponse,
    ClientOut,
    ClientResponse,
)
from service.services import clients as clients_service

bp = Blueprint("clients", __name__)

TAGS = ["API clients"]


@bp.post("/clients")
@operation(
    responses={201: ClientResponse},
    tags=TAGS,
    auth="required",
    scope=scopes.CLIENTS_MANAGE,
    body=ClientCreateRequest,
    errors=[403, 409],
    examples={
        201: CLIENT_RESPONSE_EXAMPLE,
        403: {"errors": {"scopes": ["your role cannot grant: admin"]}},
    },
    body_example=CLIENT_CREATE_EXAMPLE,
)
@idempotent
async def create_client(viewer: User) -> tuple[Response, int]:
    """Create an API client for an integration.

    Its `client_credentials` tokens act for you with the client's `scopes` only (any scope
    your role allows but `clients:manage`; `admin` for admins only, else 403). The
    `clientSecret` is shown in this answer only and stored as a hash: keep it. At most 25
    clients per user (409 beyond).
    """
    body = body_of(ClientCreateRequest)
    created = await clients_service.create_client(
        session=db.session, owner=viewer, data=body.client
    )
    out = ClientCreatedOut(
        **ClientOut.of(created.client).model_dump(), client_secret=created.secret
    )
    return jsonify(ClientResponse(client=out).to_json()), 201


@bp.get("/clients")
@operation(
    responses={200: ClientListResponse},
    tags=TAGS,
    auth="required",
    scope=scopes.CLIENTS_MANAGE,
    examples={200: CLIENTS_RESPONSE_EXAMPLE},
)
async def list_clients(viewer: User) -> Response:
    """List your API clients (never their secrets)."""
    found = await clients_service.list_clients(session=db.session, owner=viewer)
    out = ClientListResponse(clients=[ClientOut.of(c) for c in found], clients_count=len(found))
    return jsonify(out.to_json())


@bp.delete("/clients/<client_id>")
@operation(
    responses={204: None},
    tags=TAGS,
    auth="required",
    scope=scopes.CLIENTS_MANAGE,
    errors=[404],
)
async def delete_client(client_id: str, viewer: User) -> tuple[str, int]:
    """Delete one of your API clients; every token it was given stops working at once."""
    await clients_service.delete_client(session=db.session, owner=viewer, client_id=client_id)
    return "", 204
