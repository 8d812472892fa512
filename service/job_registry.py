"""The handlers of the service's job kinds, and the worker that runs them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
from service.jobs.worker import describe_failure
from service.services import idempotency, password_reset
from service.webhooks import retention
from service.webhooks.disabling import DISABLED_MAIL_JOB, send_disabled_mail
from service.webhooks.handler import DeliveryHandler
from service.webhooks.outbox import DELIVER_JOB

logger = logging.getLogger("conduit.jobs")


async def password_reset_request(payload: dict[str, Any], context: JobContext) -> None:
    """Mail a reset link if the address has an account (`{"email": ...}`)."""
    email = payload.get("email")
    if not isinstance(email, str):
        raise PermanentJobError("payload has no email")
    settings = context.settings
    lifetime = timedelta(minutes=settings.password_reset_minutes)
    # The token commits before the mail leaves: its reader may follow the link at once.
    async with context.sessionmaker.begin() as session:
        issued = await password_reset.issue_reset(session=session, email=email, lifetime=lifetime)
    if issued is None:
        return
    try:
        await password_reset.mail_reset(
            mailer=context.mailer,
            issued=issued,
            reset_url=settings.password_reset_url,
            lifetime=lifetime,
        )
    except BaseException as exc:
        # Not sent (or not known to be: shutdown): withdrawn, it does not hold back the retry.
        await asyncio.shield(_withdraw(context, issued))
        if isinstance(exc, MailRejected):
            raise PermanentJobError(str(exc)) from exc
        raise


async def _withdraw(context: JobContext, issued: password_reset.IssuedReset) -> None:
    try:
        async with context.sessionmaker.begin() as session:
            await password_reset.withdraw_reset(session=session, issued=issued)
    except Exception as exc:
        # The retry then finds a link "sent" moments ago and mails nothing; the user can ask
        # again after the resend interval. Logged rather than raised: the mail's error is the
        # one the job records.
        logger.warning("withdrawing an unsent reset token failed: %s", describe_failure(exc))


async def retired(payload: dict[str, Any], context: JobContext) -> None:
    """A job kind this version no longer has work for: done at once, so that jobs queued by
    an earlier version do not fail (`auth.publish_revocations`: revocations are read from
    the database on every request since 2026-12)."""


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
    "auth.publish_revocations": retired,
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
        # Deliveries wait on remote servers (up to WEBHOOK_TIMEOUT_SECONDS each): in slots of
        # their own they neither starve nor are starved by mail.
        kind_concurrency={DELIVER_JOB: settings.webhook_delivery_concurrency},
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
