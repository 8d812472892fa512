"""The audit log: one row per admin or moderator action, written in the action's transaction.

An entry is written by the same transaction as the change it records, so the log and the data
cannot disagree: a rolled-back action leaves no entry, a committed one always has one.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import ColumnElement, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.domain.audit import AuditRecord
from service.domain.pages import Page, Position, Window
from service.models import AuditEntry, User
from service.schemas.user import is_valid_username
from service.services import keyset

# Details are shown to every admin and kept indefinitely: no key that may name a credential.
_SECRET_WORDS = ("password", "secret", "token", "hash", "key")


def _check_no_secrets(details: dict[str, Any]) -> None:
    for key in details:
        if any(word in key.lower() for word in _SECRET_WORDS):
            raise ValueError(f"audit details must not carry secrets: {key!r}")


async def record(
    *,
    session: AsyncSession,
    actor: User | None,
    action: str,
    target_type: str,
    target_id: str | int,
    details: dict[str, Any] | None,
) -> int:
    """Write one entry in the caller's transaction and return its id.

    `actor` None means the command line. `details` is stored as JSON text; keys that could
    name a credential are refused (`ValueError`: a programming error, never client input).
    """
    text = None
    if details is not None:
        _check_no_secrets(details)
        text = orjson.dumps(details, option=orjson.OPT_SORT_KEYS).decode()
    entry_id: int = (
        await session.scalars(
            insert(AuditEntry)
            .values(
                actor_id=actor.id if actor is not None else None,
                action=action,
                target_type=target_type,
                target_id=str(target_id),
                details=text,
            )
            .returning(AuditEntry.id)
        )
    ).one()
    return entry_id


def _details(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    value = orjson.loads(text)
    return value if isinstance(value, dict) else {"value": value}


NEWEST = keyset.Ordering(keys=(AuditEntry.created_at, AuditEntry.id))


async def list_entries(
    *,
    session: AsyncSession,
    limit: int,
    offset: int,
    action: str | None = None,
    actor: str | None = None,
    position: Position | None = None,
) -> Page[AuditRecord]:
    """Entries newest first (from `position` if given), filtered by exact action and/or actor
    username (any case)."""
    conditions: list[ColumnElement[bool]] = []
    if action is not None:
        conditions.append(AuditEntry.action == action)
    if actor is not None:
        if not is_valid_username(actor):
            return Page(items=[], total=0)
        conditions.append(
            AuditEntry.actor_id.in_(
                select(User.id).where(func.lower(User.username) == func.lower(actor))
            )
        )
    total = await session.scalar(select(func.count()).select_from(AuditEntry).where(*conditions))
    window = Window(limit=limit, offset=offset, position=position)
    statement = (
        select(AuditEntry, User.username)
        .outerjoin(User, User.id == AuditEntry.actor_id)
        .where(*conditions)
    )
    rows, edges = await keyset.read(session, statement, NEWEST, window)
    return Page(
        items=[
            AuditRecord(
                id=entry.id,
                actor=username,
                action=entry.action,
                target_type=entry.target_type,
                target_id=entry.target_id,
                details=_details(entry.details),
                created_at=entry.created_at,
            )
            for entry, username, *_ in rows
        ],
        total=total or 0,
        edges=edges,
    )
