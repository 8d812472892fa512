"""Webhook endpoints of users and their delivery log: create, change, rotate, ping, redeliver.

Endpoints belong to their owner; admins may see and manage every endpoint (their changes to
someone else's are audited), but only the owner may rotate a secret, since the new one is shown
to whoever rotates it. Anyone else is told the endpoint does not exist.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.domain import events
from service.domain.errors import Conflict, NotFound, PermissionDenied
from service.domain.events import EventType
from service.domain.pages import Page, Position, Window
from service.domain.webhooks import (
    EndpointSecretView,
    EndpointView,
    MessageDetail,
    MessageView,
)
from service.infra.address_policy import AddressPolicy
from service.infra.secret_box import SecretBox
from service.jobs import queue
from service.models import User, WebhookAttempt, WebhookEndpoint, WebhookEvent, WebhookMessage
from service.schemas.webhook import URL_PATTERN, WebhookCreate, WebhookUpdate
from service.services import audit, keyset
from service.services.admin import ADMIN
from service.webhooks import catalogue, outbox, redelivery, signing
from service.webhooks.ssrf import WebhookUrlRefused, check_url

MAX_ENDPOINTS_PER_USER = 20
# How long the secret before a rotation keeps signing alongside the new one.
ROTATION_OVERLAP = timedelta(hours=24)
MANUAL = "manual"
DISABLED = "the endpoint is disabled; enable it first"
_URL = re.compile(URL_PATTERN)
# Message ids are `msg_` + 32 hex digits; anything that could not be one is simply not found
# (and never reaches PostgreSQL, which cannot store NUL).
_MESSAGE_ID = re.compile(r"[!-+\--~]{1,40}")


def check_endpoint_url(url: str, *, policy: AddressPolicy) -> str:
    """The canonical form of a webhook URL, or `WebhookUrlRefused` (422) saying why not.

    Beyond the SSRF guard's static check: the host is an ASCII domain name (`URL_PATTERN`),
    or an IP address that the allowlist names (public IP literals are refused too: they are
    not what the API documents, and a receiver behind a bare address rarely has a certificate).
    """
    target = check_url(url, policy=policy)
    if target.address is not None:
        if not policy.allows(target.address):
            raise WebhookUrlRefused(
                "the host must be a domain name; IP addresses only where the server's "
                "allowlist names them"
            )
    elif _URL.fullmatch(url) is None:
        raise WebhookUrlRefused(
            "the host must be a domain name in ASCII (internationalised names in their xn-- "
            "form), and the port, if any, a number from 1 to 65535 without leading zeros"
        )
    return target.url


def _is_admin(viewer: User) -> bool:
    return viewer.role == ADMIN


async def _endpoint(
    session: AsyncSession, viewer: User, endpoint_id: uuid.UUID, *, lock: bool = False
) -> EndpointView:
    """The endpoint if `viewer` may see it (`NotFound` otherwise), optionally locked."""
    statement = (
        select(WebhookEndpoint, User.username)
        .join(User, User.id == WebhookEndpoint.owner_id)
        .where(WebhookEndpoint.id == endpoint_id)
    )
    if not _is_admin(viewer):
        statement = statement.where(WebhookEndpoint.owner_id == viewer.id)
    if lock:
        statement = statement.with_for_update(of=WebhookEndpoint).execution_options(
            populate_existing=True
        )
    row = (await session.execute(statement)).one_or_none()
    if row is None:
        raise NotFound("webhook not found", field="webhook")
    return EndpointView(endpoint=row[0], owner=row[1])


async def _audit_if_not_owner(
    session: AsyncSession, viewer: User, view: EndpointView, action: str, details: dict[str, Any]
) -> None:
    if view.endpoint.owner_id != viewer.id:
        await audit.record(
            session=session,
            actor=viewer,
            action=action,
            target_type="webhook",
            target_id=str(view.endpoint.id),
            # Not the URL: its query may hold the receiver's credentials.
            details={"owner": view.owner, **details},
        )


async def create_endpoint(
    *,
    session: AsyncSession,
    owner: User,
    data: WebhookCreate,
    policy: AddressPolicy,
    box: SecretBox,
) -> EndpointSecretView:
    """Create an endpoint for `owner` with a new signing secret, stored sealed by `box`
    (at most 20 per user)."""
    url = check_endpoint_url(data.url, policy=policy)
    # Creations by one owner take turns, so two at once cannot both pass the limit.
    await session.execute(
        select(User.id).where(User.id == owner.id).with_for_update(key_share=True)
    )
    count = await session.scalar(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.owner_id == owner.id)
    )
    if (count or 0) >= MAX_ENDPOINTS_PER_USER:
        raise Conflict(f"at most {MAX_ENDPOINTS_PER_USER} webhooks per user", field="webhook")
    secret = signing.generate_secret()
    endpoint = WebhookEndpoint(
        owner_id=owner.id,
        url=url,
        description=data.description,
        events=list(data.events),
        enabled=True,
        rate_limit=data.rate_limit,
        secret=box.seal(secret),
    )
    session.add(endpoint)
    await session.flush()
    await session.refresh(endpoint)
    return EndpointSecretView(endpoint=endpoint, owner=owner.username, secret=secret)


NEWEST_ENDPOINTS = keyset.Ordering(keys=(WebhookEndpoint.created_at, WebhookEndpoint.id))
NEWEST_MESSAGES = keyset.Ordering(keys=(WebhookMessage.created_at, WebhookMessage.id))


async def list_endpoints(
    *,
    session: AsyncSession,
    viewer: User,
    limit: int,
    offset: int,
    position: Position | None = None,
) -> Page[EndpointView]:
    """The viewer's endpoints (every endpoint for admins), newest first (from `position`)."""
    conditions: list[ColumnElement[bool]] = []
    if not _is_admin(viewer):
        conditions.append(WebhookEndpoint.owner_id == viewer.id)
    total = await session.scalar(
        select(func.count()).select_from(WebhookEndpoint).where(*conditions)
    )
    window = Window(limit=limit, offset=offset, position=position)
    statement = (
        select(WebhookEndpoint, User.username)
        .join(User, User.id == WebhookEndpoint.owner_id)
        .where(*conditions)
    )
    rows, edges = await keyset.read(session, statement, NEWEST_ENDPOINTS, window)
    return Page(
        items=[EndpointView(endpoint=row[0], owner=row[1]) for row in rows],
        total=total or 0,
        edges=edges,
    )


async def get_endpoint(
    *, session: AsyncSession, viewer: User, endpoint_id: uuid.UUID
) -> EndpointView:
    """One endpoint the viewer may see."""
    return await _endpoint(session, viewer, endpoint_id)


async def update_endpoint(
    *,
    session: AsyncSession,
    viewer: User,
    endpoint_id: uuid.UUID,
    data: WebhookUpdate,
    policy: AddressPolicy,
) -> EndpointView:
    """Change the given fields. Disabling records `manual`; enabling a disabled endpoint
    clears why it was disabled and since when it was failing."""
    view = await _endpoint(session, viewer, endpoint_id, lock=True)
    endpoint = view.endpoint
    changes = data.model_dump(exclude_unset=True)
    if "url" in changes:
        endpoint.url = check_endpoint_url(changes["url"], policy=policy)
    if "events" in changes:
        endpoint.events = list(changes["events"])
    if "description" in changes:
        endpoint.description = changes["description"]
    if "rate_limit" in changes:
        endpoint.rate_limit = changes["rate_limit"]
    if "enabled" in changes:
        if changes["enabled"] and not endpoint.enabled:
            endpoint.enabled = True
            endpoint.disabled_reason = None
            endpoint.failing_since = None
        elif not changes["enabled"] and endpoint.enabled:
            endpoint.enabled = False
            endpoint.disabled_reason = MANUAL
    if changes:
        await _audit_if_not_owner(
            session, viewer, view, "webhook.update", {"fields": sorted(changes)}
        )
    await session.flush()
    await session.refresh(endpoint)
    return view


async def delete_endpoint(*, session: AsyncSession, viewer: User, endpoint_id: uuid.UUID) -> None:
    """Delete an endpoint with its delivery log; its queued deliveries find nothing to do."""
    view = await _endpoint(session, viewer, endpoint_id, lock=True)
    await _audit_if_not_owner(session, viewer, view, "webhook.delete", {})
    # Events that only this endpoint had a message of go too (their messages with them): no
    # event is kept without a subscriber. The retention task sweeps up those left otherwise.
    others = (
        select(WebhookMessage.id)
        .where(
            WebhookMessage.event_id == WebhookEvent.id,
            WebhookMessage.endpoint_id != endpoint_id,
        )
        .exists()
    )
    await session.execute(
        delete(WebhookEvent)
        .where(
            WebhookEvent.id.in_(
                select(WebhookMessage.event_id).where(WebhookMessage.endpoint_id == endpoint_id)
            ),
            ~others,
        )
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        delete(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .execution_options(synchronize_session=False)
    )


async def rotate_secret(
    *, session: AsyncSession, viewer: User, endpoint_id: uuid.UUID, box: SecretBox
) -> EndpointSecretView:
    """Give the owner's endpoint a new secret, stored sealed by `box`; the current one keeps
    signing for 24 hours.

    A rotation within 24 hours of the last one drops the oldest secret at once.
    """
    view = await _endpoint(session, viewer, endpoint_id, lock=True)
    endpoint = view.endpoint
    if endpoint.owner_id != viewer.id:
        raise PermissionDenied("only the owner may rotate the secret", field="webhook")
    # Moved as stored (no decryption): a secret from before encryption gets sealed on the way.
    endpoint.previous_secret = box.sealed(endpoint.secret)
    endpoint.previous_secret_expires_at = datetime.now(UTC) + ROTATION_OVERLAP
    secret = signing.generate_secret()
    endpoint.secret = box.seal(secret)
    await session.flush()
    await session.refresh(endpoint)
    return EndpointSecretView(endpoint=endpoint, owner=view.owner, secret=secret)


async def _enqueue_delivery(session: AsyncSession, message_id: str) -> None:
    await queue.enqueue(
        session=session,
        kind=outbox.DELIVER_JOB,
        payload={"messageId": message_id},
        max_attempts=outbox.DELIVERY_JOB_ATTEMPTS,
    )


async def ping(*, session: AsyncSession, viewer: User, endpoint_id: uuid.UUID) -> MessageView:
    """Queue a `webhook.ping` event for this endpoint alone, whatever types it subscribed to.

    Written directly rather than through `outbox.emit`, which only reaches endpoints that
    subscribed to the type and would not say which message it created.
    """
    view = await _endpoint(session, viewer, endpoint_id)
    if not view.endpoint.enabled:
        raise Conflict(DISABLED, field="webhook")
    event_id = await session.scalar(
        insert(WebhookEvent)
        .values(type=events.WEBHOOK_PING, data=catalogue.ping_data(webhook_id=endpoint_id))
        .returning(WebhookEvent.id)
    )
    message = (
        await session.scalars(
            insert(WebhookMessage)
            .values(
                id=signing.new_message_id(),
                endpoint_id=endpoint_id,
                event_id=event_id,
                status="pending",
                attempts=0,
                next_attempt_at=func.now(),
            )
            .returning(WebhookMessage)
        )
    ).one()
    await _enqueue_delivery(session, message.id)
    return MessageView(message=message, event_type=events.WEBHOOK_PING, attempt_count=0)


def _attempt_count() -> Any:
    return (
        select(func.count())
        .where(WebhookAttempt.message_id == WebhookMessage.id)
        .correlate(WebhookMessage)
        .scalar_subquery()
    )


async def list_messages(
    *,
    session: AsyncSession,
    viewer: User,
    endpoint_id: uuid.UUID,
    status: str | None,
    limit: int,
    offset: int,
    position: Position | None = None,
) -> Page[MessageView]:
    """The endpoint's delivery log, newest first (from `position` if given), optionally only
    messages in `status`."""
    await _endpoint(session, viewer, endpoint_id)
    conditions: list[ColumnElement[bool]] = [WebhookMessage.endpoint_id == endpoint_id]
    if status is not None:
        conditions.append(WebhookMessage.status == status)
    total = await session.scalar(
        select(func.count()).select_from(WebhookMessage).where(*conditions)
    )
    window = Window(limit=limit, offset=offset, position=position)
    statement = (
        select(WebhookMessage, WebhookEvent.type, _attempt_count())
        .join(WebhookEvent, WebhookEvent.id == WebhookMessage.event_id)
        .where(*conditions)
    )
    rows, edges = await keyset.read(session, statement, NEWEST_MESSAGES, window)
    return Page(
        items=[
            MessageView(message=row[0], event_type=row[1], attempt_count=row[2]) for row in rows
        ],
        total=total or 0,
        edges=edges,
    )


async def _message(
    session: AsyncSession, endpoint_id: uuid.UUID, message_id: str
) -> tuple[MessageView, WebhookEvent]:
    row = None
    if _MESSAGE_ID.fullmatch(message_id):
        row = (
            await session.execute(
                select(WebhookMessage, WebhookEvent, _attempt_count())
                .join(WebhookEvent, WebhookEvent.id == WebhookMessage.event_id)
                .where(WebhookMessage.id == message_id, WebhookMessage.endpoint_id == endpoint_id)
                .execution_options(populate_existing=True)
            )
        ).one_or_none()
    if row is None:
        raise NotFound("message not found", field="message")
    message, event, attempts = row
    return MessageView(message=message, event_type=event.type, attempt_count=attempts), event


async def get_message(
    *, session: AsyncSession, viewer: User, endpoint_id: uuid.UUID, message_id: str
) -> MessageDetail:
    """One message of the endpoint's log with its payload and attempts."""
    await _endpoint(session, viewer, endpoint_id)
    view, event = await _message(session, endpoint_id, message_id)
    attempts = await session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.message_id == view.message.id)
        .order_by(WebhookAttempt.started_at, WebhookAttempt.id)
    )
    return MessageDetail(view=view, event=event, attempts=list(attempts))


async def redeliver(
    *, session: AsyncSession, viewer: User, endpoint_id: uuid.UUID, message_id: str
) -> MessageView:
    """Queue one more attempt of a message now, with the same message id (see
    `redelivery.redeliver`: a pending message's next retry is brought forward)."""
    view = await _endpoint(session, viewer, endpoint_id)
    if not view.endpoint.enabled:
        raise Conflict(DISABLED, field="webhook")
    found = None
    if _MESSAGE_ID.fullmatch(message_id):
        found = await session.scalar(
            select(WebhookMessage.id).where(
                WebhookMessage.id == message_id, WebhookMessage.endpoint_id == endpoint_id
            )
        )
    if found is None:
        raise NotFound("message not found", field="message")
    await redelivery.redeliver(session=session, message_ids=[message_id])
    requeued, _ = await _message(session, endpoint_id, message_id)
    return requeued


async def recover(
    *, session: AsyncSession, viewer: User, endpoint_id: uuid.UUID, since: datetime
) -> int:
    """Queue one more attempt of every failed message of the endpoint created at or after
    `since`; return how many."""
    view = await _endpoint(session, viewer, endpoint_id)
    if not view.endpoint.enabled:
        raise Conflict(DISABLED, field="webhook")
    failed = await session.scalars(
        select(WebhookMessage.id).where(
            WebhookMessage.endpoint_id == endpoint_id,
            WebhookMessage.status == "failed",
            WebhookMessage.created_at >= since,
        )
    )
    return await redelivery.redeliver(session=session, message_ids=list(failed))


def event_types() -> tuple[EventType, ...]:
    """The catalogue of event types."""
    return catalogue.EVENT_TYPES
