"""Disabling an endpoint (it answered 410 Gone, or kept failing) and the mail telling its owner.

Disabling marks the endpoint's pending messages failed and queues the owner's mail
(`webhook.disabled_mail` job) in the transaction of the outcome that caused it; a job that
finds its endpoint disabled fails its message (`outcomes.fail_unsent`), and events raised
while it is disabled get a failed message (`outbox.emit`). Nothing is silently dropped: once
the endpoint is enabled again, "recover since T" (`redelivery.redeliver`) re-sends them.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.infra.mail import MailRejected
from service.jobs import JobContext, PermanentJobError, enqueue
from service.models import User, WebhookEndpoint, WebhookMessage

logger = logging.getLogger("conduit.webhooks")

DISABLED_MAIL_JOB = "webhook.disabled_mail"
DISABLED_MAIL_SUBJECT = "Your Conduit webhook endpoint was disabled"
# The endpoint's `disabled_reason` when the service disabled it.
DISABLED_GONE = "gone"
DISABLED_FAILING = "failing"


async def disable(*, session: AsyncSession, endpoint_id: uuid.UUID, reason: str) -> None:
    """Disable an enabled endpoint, fail its pending messages and queue the owner's mail."""
    disabled = await session.scalar(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason)
        .returning(WebhookEndpoint.id)
    )
    if disabled is None:
        return  # disabled meanwhile: its owner was told then
    await session.execute(
        update(WebhookMessage)
        .where(WebhookMessage.endpoint_id == endpoint_id, WebhookMessage.status == "pending")
        .values(status="failed", next_attempt_at=None)
    )
    await enqueue(
        session=session,
        kind=DISABLED_MAIL_JOB,
        payload={"endpointId": str(endpoint_id), "reason": reason},
    )
    logger.warning(
        "webhook endpoint %s disabled: %s",
        endpoint_id,
        reason,
        extra={"endpoint_id": str(endpoint_id)},
    )


async def send_disabled_mail(payload: dict[str, Any], context: JobContext) -> None:
    """Tell an endpoint's owner that it was disabled (`{"endpointId": ...}`); nothing if it
    was deleted or enabled again meanwhile."""
    try:
        endpoint_id = uuid.UUID(payload["endpointId"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentJobError(f"malformed payload: {exc!r}") from exc
    async with context.sessionmaker() as session:
        row = (
            await session.execute(
                select(WebhookEndpoint, User.email)
                .join(User, User.id == WebhookEndpoint.owner_id)
                .where(WebhookEndpoint.id == endpoint_id)
            )
        ).one_or_none()
    if row is None:
        return
    endpoint, email = row
    if endpoint.enabled:
        return
    text = disabled_mail_text(
        endpoint=endpoint, retention_days=context.settings.webhook_retention_days
    )
    try:
        await context.mailer.send(email, DISABLED_MAIL_SUBJECT, text)
    except MailRejected as exc:
        raise PermanentJobError(str(exc)) from exc


def display_url(url: str) -> str:
    """The URL without credentials, query or fragment (they may hold the receiver's token)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def disabled_mail_text(*, endpoint: WebhookEndpoint, retention_days: int) -> str:
    """The body of the mail telling an owner that their endpoint was disabled; the delivery
    log keeps messages `retention_days` days."""
    if endpoint.disabled_reason == DISABLED_GONE:
        why = "it answered 410 Gone, which tells us to stop sending."
    else:
        since = endpoint.failing_since
        started = f" since {since:%Y-%m-%d %H:%M} UTC" if since is not None else ""
        why = f"deliveries to it kept failing{started}, after every retry."
    described = f" ({endpoint.description})" if endpoint.description else ""
    return (
        f"Your webhook endpoint {endpoint.id}{described}\n"
        f"at {display_url(endpoint.url)}\n"
        f"was disabled because {why}\n\n"
        "No events are sent to it while it is disabled; the messages it did not receive, and "
        "those of events that happen meanwhile, are kept as failed in its delivery log for "
        f"{retention_days} days.\n\n"
        "Once the receiver works again, enable the endpoint through the API, then recover the "
        "failed messages since the time it stopped receiving them: they are sent again, with "
        "the same webhook-id as before.\n"
    )
