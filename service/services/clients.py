"""API clients: an integration's credentials, acting for their owner with limited scopes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.domain import scopes as scopes_service
from service.domain.errors import Conflict, NotFound, PermissionDenied
from service.models import ApiClient, User
from service.schemas.client import ClientCreate
from service.services import sessions

CLIENT_ID_PREFIX = "cl_"
SECRET_PREFIX = "cs_"  # noqa: S105 (a prefix, not a secret)
MAX_CLIENTS_PER_USER = 25
DELETED_REASON = "client_deleted"


def hash_secret(secret: str) -> str:
    """The stored form of a client secret (SHA-256 hex).

    Secrets are 256 random bits, so a slow password hash would add nothing but cost to every
    token request; the table alone never lets anyone authenticate.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedClient:
    """A new client and its secret, which is never stored or shown again."""

    client: ApiClient
    secret: str


async def create_client(*, session: AsyncSession, owner: User, data: ClientCreate) -> CreatedClient:
    """Create a client for `owner` with `data.scopes` (each allowed for the owner's role)."""
    # Unknown scopes (and `clients:manage`) are never valid for a client: 422. A valid scope
    # the owner's role cannot hold (`admin`) is a permission matter: 403.
    scopes_service.validate(data.scopes, allowed=scopes_service.FOR_CLIENTS, field="scopes")
    forbidden = sorted(set(data.scopes) - scopes_service.allowed_for_client(owner.role))
    if forbidden:
        raise PermissionDenied(f"your role cannot grant: {', '.join(forbidden)}", field="scopes")
    # The owner's row serialises concurrent creations, so the limit holds.
    await session.execute(select(User.id).where(User.id == owner.id).with_for_update())
    count = await session.scalar(
        select(func.count()).select_from(ApiClient).where(ApiClient.owner_id == owner.id)
    )
    if (count or 0) >= MAX_CLIENTS_PER_USER:
        raise Conflict(f"at most {MAX_CLIENTS_PER_USER} clients per user", field="client")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    client = ApiClient(
        client_id=CLIENT_ID_PREFIX + secrets.token_urlsafe(16),
        owner_id=owner.id,
        name=data.name,
        secret_hash=hash_secret(secret),
        scope=scopes_service.format_scope(data.scopes),
    )
    session.add(client)
    await session.flush()
    return CreatedClient(client=client, secret=secret)


async def list_clients(*, session: AsyncSession, owner: User) -> list[ApiClient]:
    """The clients of `owner`, oldest first."""
    found = await session.scalars(
        select(ApiClient)
        .where(ApiClient.owner_id == owner.id)
        .order_by(ApiClient.created_at, ApiClient.client_id)
    )
    return list(found)


async def delete_client(*, session: AsyncSession, owner: User, client_id: str) -> None:
    """Delete one of `owner`'s clients and revoke every token it was given."""
    client = await session.scalar(
        select(ApiClient)
        .where(ApiClient.client_id == client_id, ApiClient.owner_id == owner.id)
        .with_for_update()
    )
    if client is None:
        raise NotFound("client not found", field="client")
    await sessions.revoke_all_sessions(
        session=session, user_id=owner.id, reason=DELETED_REASON, client_id=client.id
    )
    await session.delete(client)
    await session.flush()


async def find_client(*, session: AsyncSession, client_id: str, secret: str) -> ApiClient | None:
    """The client these credentials name, or None (unknown id or wrong secret)."""
    client = await session.scalar(select(ApiClient).where(ApiClient.client_id == client_id))
    expected = client.secret_hash if client is not None else hash_secret("")
    # Compared in constant time whether or not the client exists.
    matches = hmac.compare_digest(expected, hash_secret(secret))
    return client if client is not None and matches else None
