"""The handlers of the service's job kinds, and the worker that runs them."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis

from service.jobs.worker import Handler, JobContext, PermanentJobError, Worker
from service.mail import MailRejected
from service.services import password_reset, revocation
from service.settings import Settings


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
    url = context.settings.redis_url
    if url is None:
        raise PermanentJobError("REDIS_URL is not set")
    timeout = context.settings.redis_socket_timeout
    client = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        await revocation.publish(redis=client, session_ids=session_ids, ttl_seconds=ttl)
    finally:
        await client.aclose()


HANDLERS: dict[str, Handler] = {
    password_reset.REQUEST_JOB: password_reset_request,
    revocation.PUBLISH_JOB: publish_revocations,
}


def create_worker(settings: Settings, **options: Any) -> Worker:
    """A `Worker` with every handler of the service registered (`options` go to `Worker`)."""
    return Worker(settings, handlers=HANDLERS, **options)
