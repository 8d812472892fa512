"""`conduit webhooks reencrypt-secrets`: every stored signing secret sealed with the first key."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.infra.secret_box import SecretBox, UnreadableSecret
from service.models import WebhookEndpoint


@dataclass
class ReencryptReport:
    """What `reencrypt_secrets` did, in numbers, and the endpoints it could not read."""

    resealed: int = 0
    current: int = 0
    expired_dropped: int = 0
    unreadable: list[uuid.UUID] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the command's output."""
        line = (
            f"webhook secrets: {self.resealed} re-encrypted with the first key, "
            f"{self.current} already current, {self.expired_dropped} expired previous "
            "secret(s) dropped"
        )
        if self.unreadable:
            line += f", {len(self.unreadable)} endpoint(s) unreadable"
        return line


# On the table, not the entity: the ORM's bulk UPDATE by primary key takes no WHERE clause.
_ENDPOINTS = cast(Table, WebhookEndpoint.__table__)
_SAVE = (
    update(_ENDPOINTS)
    .where(_ENDPOINTS.c.id == bindparam("endpoint_id"))
    .values(
        secret=bindparam("new_secret"),
        previous_secret=bindparam("new_previous"),
        previous_secret_expires_at=bindparam("new_expires"),
        # Not a change the owner made: `updatedAt` stays.
        updated_at=_ENDPOINTS.c.updated_at,
    )
)


async def reencrypt_secrets(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    box: SecretBox,
    batch_size: int,
) -> ReencryptReport:
    """Seal every stored secret (current and previous) with the first key, `batch_size`
    endpoints per transaction; drop previous secrets whose overlap has ended. Idempotent.

    Rows are locked while their batch is rewritten, so a concurrent rotation is never undone.
    An endpoint no key opens is left as it is and named in the report.
    """
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    report = ReencryptReport()
    after: uuid.UUID | None = None
    while True:
        async with sessionmaker() as session, session.begin():
            query = (
                select(
                    WebhookEndpoint.id,
                    WebhookEndpoint.secret,
                    WebhookEndpoint.previous_secret,
                    WebhookEndpoint.previous_secret_expires_at,
                )
                .order_by(WebhookEndpoint.id)
                .limit(batch_size)
                .with_for_update()
            )
            if after is not None:
                query = query.where(WebhookEndpoint.id > after)
            rows = (await session.execute(query)).all()
            if not rows:
                return report
            now = datetime.now(UTC)
            changes = [
                change
                for row in rows
                if (change := _reencrypt_row(box, *row, now=now, report=report)) is not None
            ]
            if changes:
                await session.execute(_SAVE, changes)
            after = rows[-1].id


def _reencrypt_row(
    box: SecretBox,
    endpoint_id: uuid.UUID,
    secret: str,
    previous: str | None,
    expires: datetime | None,
    *,
    now: datetime,
    report: ReencryptReport,
) -> dict[str, object] | None:
    """The new values of one endpoint's secret columns, or None when nothing changes."""
    # Deliveries sign with a previous secret only until it expires: after that it is dead weight.
    dropped = previous is not None and (expires is None or expires <= now)
    if dropped:
        previous = expires = None
    try:
        new_secret = box.reseal(secret)
        new_previous = box.reseal(previous) if previous is not None else None
    except UnreadableSecret:
        report.unreadable.append(endpoint_id)
        return None
    resealed = sum(value is not None for value in (new_secret, new_previous))
    report.resealed += resealed
    report.current += 1 + (previous is not None) - resealed
    report.expired_dropped += dropped
    if not resealed and not dropped:
        return None
    return {
        "endpoint_id": endpoint_id,
        "new_secret": new_secret or secret,
        "new_previous": new_previous or previous,
        "new_expires": expires,
    }
