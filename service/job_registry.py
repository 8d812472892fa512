"""The handlers of the service's job kinds, and the worker that runs them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis

from service.caching import generations
from service.infra.mail import Mailer, MailRejected
from service.infra.redis import ClientOptions, close_client, open_client
from service.infra.settings import Settings
from service.jobs import Handler, JobContext, PermanentJobError, Worker, WorkerConfig
from service.services import idempotency, password_reset, revocation
from service.webhooks import retention
from service.webhooks.disabling import DISABLED_MAIL_JOB, send_disabled_mail
from service.webhooks.handler import DeliveryHandler
from service.webhooks.outbox import DELIVER_JOB

# Webhook deliveries wait on remote servers (up to WEBHOOK_TIMEOUT_SECONDS each): they run in
# slots of their own, beside WORKER_CONCURRENCY, so they neither starve nor are starved by mail.
WEBHOOK_DELIVERY_CONCURRENCY = 32


async def password_reset_request(payload: dict[str, Any], context: JobContext) -> None:
    """Mail a reset link if the address has an account (`{"email": ...}`)."""
    email = payload.get("email")
    if not isinstance(email, str):
        raise PermanentJobError("payload has no email")
    settings = context.settings
    try:
        # The token commits only if the mail went out (a failed send rolls it back).
        async with context.sessionmaker.begin() as session:
            await password_reset.send_reset_mail(
                session=session,
                email=email,
                mailer=context.mailer,
                reset_url=settings.password_reset_url,
                lifetime=timedelta(minutes=settings.password_reset_minutes),
            )
    except MailRejected as exc:
        raise PermanentJobError(str(exc)) from exc


async def publish_revocations(payload: dict[str, Any], context: JobContext) -> None:
    """Write revocation markers that could not be written when their sessions were revoked
    (`{"sessionIds": [...], "ttlSeconds": n}`); retried until Redis answers."""
    try:
        session_ids = [uuid.UUID(value) for value in payload["sessionIds"]]
        ttl = int(payload["ttlSeconds"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentJobError(f"malformed payload: {exc!r}") from exc
    async with _redis(context) as client:
        await revocation.publish(redis=client, session_ids=session_ids, ttl_seconds=ttl)


async def bump_cache(payload: dict[str, Any], context: JobContext) -> None:
    """Bump cache generations that could not be bumped after their commit
    (`{"kinds": [...]}`); retried until Redis answers."""
    kinds = payload.get("kinds")
    if not isinstance(kinds, list) or not set(kinds) <= set(generations.KINDS):
        raise PermanentJobError(f"malformed payload: {payload!r}")
    async with _redis(context) as client:
        await generations.bump(client=client, kinds=kinds)


@contextlib.asynccontextmanager
async def _redis(context: JobContext) -> AsyncIterator[Redis]:
    url = context.settings.redis_url
    if url is None:
        raise PermanentJobError("REDIS_URL is not set")
    client = open_client(url, ClientOptions.single(context.settings.redis_socket_timeout))
    try:
        yield client
    finally:
        await close_client(client)


HANDLERS: dict[str, Handler] = {
    password_reset.REQUEST_JOB: password_reset_request,
    revocation.PUBLISH_JOB: publish_revocations,
    generations.BUMP_JOB: bump_cache,
    DELIVER_JOB: DeliveryHandler(),
    DISABLED_MAIL_JOB: send_disabled_mail,
}


def worker_config(settings: Settings) -> WorkerConfig:
    """The service's worker configuration: the settings', with WEBHOOK_DELIVERY_CONCURRENCY
    slots of their own for webhook deliveries, and the retentions of the webhook delivery log
    and of the idempotency keys as periodic tasks."""
    return WorkerConfig.from_settings(
        settings,
        kind_concurrency={DELIVER_JOB: WEBHOOK_DELIVERY_CONCURRENCY},
        periodic={
            "webhook retention": retention.PERIODIC,
            "idempotency key retention": idempotency.PERIODIC,
        },
    )


def create_worker(settings: Settings, *, mailer: Mailer | None = None, **changes: Any) -> Worker:
    """A `Worker` with every handler of the service registered, configured by `worker_config`
    with `changes` to fields of its `WorkerConfig` (tests shrink timings)."""
    config = replace(worker_config(settings), **changes)
    return Worker(settings, config, handlers=HANDLERS, mailer=mailer)
