"""The `webhook.deliver` handler against real receivers and the real database: signing,
retries, Retry-After, 410, disabling with the owner's mail, the attempts log, redelivery."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.infra.mail import Mailer
from service.infra.settings import Settings
from service.models import Job, WebhookEvent, WebhookMessage
from service.webhooks import outbox
from service.webhooks.config import DeliveryConfig, retry_delay
from service.webhooks.disabling import DISABLED_MAIL_SUBJECT, display_url
from service.webhooks.handler import DeliveryHandler
from service.webhooks.redelivery import redeliver
from service.webhooks.signing import generate_secret
from tests.factories import TestUser
from tests.jobs.support import SmtpServer
from tests.webhooks.receivers import Receiver
from tests.webhooks.support import (
    FAST,
    Sessions,
    add_endpoint,
    all_settled,
    attempts,
    deliver,
    emit,
    endpoint_row,
    make_delivery_worker,
    messages,
    running,
    seconds_between,
    sql,
)

MakeUser = Callable[..., Awaitable[TestUser]]


def mail_settings(settings: Settings, smtp: SmtpServer) -> Mailer:
    return Mailer(settings.model_copy(update={"smtp_url": smtp.url}))


async def jobs_of(sessions: Sessions, kind: str) -> list[Job]:
    async with sessions() as session:
        return list(await session.scalars(select(Job).where(Job.kind == kind).order_by(Job.id)))


async def test_delivery_is_signed_and_verified_by_standardwebhooks(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    endpoint = await add_endpoint(
        sessionmaker, owner_id=owner.id, url=receiver.url("/verify?token=abc")
    )
    receiver.state.secrets.append(endpoint.secret)
    data = {"article": {"slug": "how-to-train-your-dragon", "title": "How to train"}}
    assert await emit(sessionmaker, "article.created", data) == 1

    assert await deliver(delivery_settings) == 1

    [message] = await messages(sessionmaker)
    assert (message.status, message.attempts) == ("delivered", 1)
    assert message.delivered_at is not None
    assert message.next_attempt_at is None
    [seen] = receiver.hits("/verify")
    assert seen.verified  # checked by the receiver with the official library
    assert seen.headers["webhook-id"] == message.id
    assert seen.headers["content-type"] == "application/json"
    verified = Webhook(endpoint.secret).verify(seen.body, seen.headers)
    assert verified["type"] == "article.created"
    assert verified["data"] == data
    async with sessionmaker() as session:
        event = await session.get(WebhookEvent, message.event_id)
    assert event is not None
    assert verified["timestamp"] == event.created_at.astimezone(UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )

    [attempt] = await attempts(sessionmaker, message.id)
    assert attempt.attempt == 1
    assert attempt.status_code == 204
    assert attempt.error is None
    assert attempt.response_excerpt is None
    assert 0 <= attempt.duration_ms < 5000
    assert abs(int(seen.headers["webhook-timestamp"]) - attempt.started_at.timestamp()) < 1
    assert message.last_attempt_at == attempt.started_at


async def test_during_rotation_both_secrets_sign(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    old, new, expired = generate_secret(), generate_secret(), generate_secret()
    await add_endpoint(
        sessionmaker,
        owner_id=owner.id,
        url=receiver.url("/ok?rotating"),
        secret=new,
        previous_secret=old,
        previous_secret_expires_at=datetime.now(UTC) + timedelta(hours=24),
    )
    await add_endpoint(
        sessionmaker,
        owner_id=owner.id,
        url=receiver.url("/status/200"),
        secret=new,
        previous_secret=expired,
        previous_secret_expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    await emit(sessionmaker)
    assert await deliver(delivery_settings) == 2

    [both] = receiver.hits("/ok")
    assert len(both.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(both.body, both.headers)["type"] == "article.created"
    [one] = receiver.hits("/status/200")
    assert len(one.headers["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(one.body, one.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(expired).verify(one.body, one.headers)


async def test_receiver_failing_three_times_then_succeeding(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    endpoint = await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/flaky/3"))
    await emit(sessionmaker)

    async with running(make_delivery_worker(delivery_settings, config=FAST)):
        [message] = await all_settled(sessionmaker, 1)

    assert (message.status, message.attempts) == ("delivered", 4)
    hits = receiver.hits("/flaky/3")
    assert len(hits) == 4
    assert {hit.headers["webhook-id"] for hit in hits} == {message.id}
    assert len({hit.body for hit in hits}) == 1  # the very same signed body every time
    log = await attempts(sessionmaker, message.id)
    assert [(a.attempt, a.status_code) for a in log] == [(1, 500), (2, 500), (3, 500), (4, 200)]
    assert [a.response_excerpt for a in log] == ["flaky"] * 4
    assert (await endpoint_row(sessionmaker, endpoint.id)).failing_since is None
    # One job per attempt, each queued by the previous one and all finished.
    jobs = await jobs_of(sessionmaker, outbox.DELIVER_JOB)
    assert [job.payload.get("attempt", 0) for job in jobs] == [0, 1, 2, 3]
    assert {job.status for job in jobs} == {"done"}


def _deliveries(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("conduit_webhook_deliveries_total", {"outcome": outcome}) or 0.0
    )


async def test_attempts_are_counted_in_the_metrics_by_outcome(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/flaky/2"))
    await emit(sessionmaker)
    outcomes = ("delivered", "http_error", "no_answer", "gone")
    before = {outcome: _deliveries(outcome) for outcome in outcomes}
    timed = REGISTRY.get_sample_value("conduit_webhook_delivery_duration_seconds_count") or 0.0

    async with running(make_delivery_worker(delivery_settings, config=FAST)):
        await all_settled(sessionmaker, 1)

    counted = {outcome: _deliveries(outcome) - before[outcome] for outcome in outcomes}
    assert counted == {"delivered": 1, "http_error": 2, "no_answer": 0, "gone": 0}
    assert REGISTRY.get_sample_value("conduit_webhook_delivery_duration_seconds_count") == (
        timed + 3
    )


async def test_a_failed_attempt_schedules_the_next_after_the_first_delay(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    endpoint = await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/status/500"))
    await emit(sessionmaker)
    assert await deliver(delivery_settings, config=DeliveryConfig()) == 1

    [message] = await messages(sessionmaker)
    [attempt] = await attempts(sessionmaker, message.id)
    assert (message.status, message.attempts, attempt.status_code) == ("pending", 1, 500)
    assert message.next_attempt_at is not None
    assert 4.4 <= seconds_between(message.next_attempt_at, attempt.started_at) <= 5.6 + 1
    stored = await endpoint_row(sessionmaker, endpoint.id)
    assert stored.failing_since == attempt.started_at
    assert stored.enabled
    first, retry = await jobs_of(sessionmaker, outbox.DELIVER_JOB)
    assert first.status == "done"
    assert (retry.status, retry.payload) == ("pending", {"messageId": message.id, "attempt": 1})
    assert retry.run_at == message.next_attempt_at


def test_retry_schedule_spans_about_three_days() -> None:
    config = DeliveryConfig()
    expected = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
    for attempt, base in enumerate(expected, start=1):
        delay = retry_delay(attempt, config=config)
        assert delay is not None
        assert base * 0.9 <= delay <= base * 1.1
    assert retry_delay(10, config=config) is None
    assert 2.9 * 86400 < sum(expected) < 3.3 * 86400
    # Retry-After: the larger of the two, capped at a day.
    exact = replace(config, jitter=0.0)
    assert retry_delay(1, config=exact, retry_after=120) == 120
    assert retry_delay(2, config=exact, retry_after=120) == 300
    assert retry_delay(1, config=exact, retry_after=10 * 86400) == 86400


async def test_429_retry_after_is_honoured_and_holds_the_endpoint_back(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    await add_endpoint(
        sessionmaker, owner_id=owner.id, url=receiver.url("/status/429?retry_after=120")
    )
    await emit(sessionmaker)
    handler = DeliveryHandler(DeliveryConfig())
    async with make_delivery_worker(delivery_settings, handler=handler) as worker:
        assert await worker.run_pending() == 1
        [message] = await messages(sessionmaker)
        [attempt] = await attempts(sessionmaker, message.id)
        assert attempt.status_code == 429
        assert message.next_attempt_at is not None
        assert 120 <= seconds_between(message.next_attempt_at, attempt.started_at) <= 122

        # Meanwhile a new event for that endpoint waits too, without using up an attempt.
        await emit(sessionmaker)
        assert await worker.run_pending() == 1
    assert len(receiver.hits("/status/429")) == 1
    _, new = await messages(sessionmaker)
    assert (new.status, new.attempts) == ("pending", 0)
    assert new.next_attempt_at is not None
    assert seconds_between(new.next_attempt_at, datetime.now(UTC)) > 100


async def test_503_with_a_short_retry_after_keeps_the_schedule(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    await add_endpoint(
        sessionmaker, owner_id=owner.id, url=receiver.url("/status/503?retry_after=1")
    )
    await emit(sessionmaker)
    await deliver(delivery_settings, config=DeliveryConfig())
    [message] = await messages(sessionmaker)
    [attempt] = await attempts(sessionmaker, message.id)
    assert message.next_attempt_at is not None
    assert 4.4 <= seconds_between(message.next_attempt_at, attempt.started_at) <= 6.6


async def test_410_disables_the_endpoint_and_mails_the_owner(
    delivery_settings: Settings,
    sessionmaker: Sessions,
    make_user: MakeUser,
    receiver: Receiver,
    smtp_server: SmtpServer,
) -> None:
    owner = await make_user(email="owner@example.com")
    gone = await add_endpoint(
        sessionmaker,
        owner_id=owner.id,
        url=receiver.url("/status/410?token=receiver-secret-token"),
        description="CRM sync",
    )
    healthy = await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/ok"))
    await emit(sessionmaker)
    await emit(sessionmaker)

    mailer = mail_settings(delivery_settings, smtp_server)
    async with running(make_delivery_worker(delivery_settings, mailer=mailer)):
        settled = await all_settled(sessionmaker, 4)
        [mail] = await smtp_server.wait_for(1)

    by_endpoint = {(m.endpoint_id, m.status) for m in settled}
    assert by_endpoint == {(gone.id, "failed"), (healthy.id, "delivered")}
    stored = await endpoint_row(sessionmaker, gone.id)
    assert (stored.enabled, stored.disabled_reason) == (False, "gone")
    assert (await endpoint_row(sessionmaker, healthy.id)).enabled
    assert 1 <= len(receiver.hits("/status/410")) <= 2
    assert mail.recipients == ["owner@example.com"]
    assert mail.message["Subject"] == DISABLED_MAIL_SUBJECT
    assert "410 Gone" in mail.text
    assert str(gone.id) in mail.text
    assert "CRM sync" in mail.text
    assert f"{receiver.url('/status/410')}\n" in mail.text
    assert "receiver-secret-token" not in mail.text
    assert gone.secret not in mail.text
    assert len(smtp_server.received) == 1


async def test_after_the_last_retry_fails_the_endpoint_is_disabled_and_the_owner_mailed(
    delivery_settings: Settings,
    sessionmaker: Sessions,
    make_user: MakeUser,
    receiver: Receiver,
    smtp_server: SmtpServer,
) -> None:
    owner = await make_user(email="owner@example.com")
    endpoint = await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/status/500"))
    await emit(sessionmaker)
    config = replace(FAST, schedule=(0.05, 0.05))
    mailer = mail_settings(delivery_settings, smtp_server)
    async with running(make_delivery_worker(delivery_settings, config=config, mailer=mailer)):
        [message] = await all_settled(sessionmaker, 1)
        [mail] = await smtp_server.wait_for(1)

    assert (message.status, message.attempts) == ("failed", 3)
    assert [a.status_code for a in await attempts(sessionmaker, message.id)] == [500] * 3
    stored = await endpoint_row(sessionmaker, endpoint.id)
    assert (stored.enabled, stored.disabled_reason) == (False, "failing")
    assert stored.failing_since is not None
    assert mail.recipients == ["owner@example.com"]
    assert "kept failing since" in mail.text


async def test_five_days_of_continuous_failure_disable_the_endpoint(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    since = datetime.now(UTC) - timedelta(days=5, minutes=1)
    endpoint = await add_endpoint(
        sessionmaker, owner_id=owner.id, url=receiver.url("/status/502"), failing_since=since
    )
    await emit(sessionmaker)
    await emit(sessionmaker)
    async with make_delivery_worker(delivery_settings, config=DeliveryConfig()) as worker:
        # The endpoint is failing: one trial attempt, the other message waits for its outcome.
        await worker.run_pending()
        mail_jobs = await jobs_of(sessionmaker, "webhook.disabled_mail")

    assert len(receiver.hits("/status/502")) == 1
    stored = await endpoint_row(sessionmaker, endpoint.id)
    assert (stored.enabled, stored.disabled_reason, stored.failing_since) == (
        False,
        "failing",
        since,
    )
    # Disabling failed the message still waiting as well: recoverable, never silently dropped.
    assert [m.status for m in await messages(sessionmaker)] == ["failed", "failed"]
    assert [job.payload for job in mail_jobs] == [
        {"endpointId": str(endpoint.id), "reason": "failing"}
    ]


async def test_a_rolled_back_change_emits_nothing(
    delivery_settings: Settings,
    sessionmaker: Sessions,
    owner: TestUser,
    receiver: Receiver,
    database_url: str,
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/ok"))
    async with sessionmaker() as session:
        transaction = await session.begin()
        assert (
            await outbox.emit(session=session, event_type="article.created", data={}, audience=None)
            == 1
        )
        await transaction.rollback()

    counts = await sql(
        database_url,
        "SELECT (SELECT count(*) FROM webhook_events) AS events,"
        " (SELECT count(*) FROM webhook_messages) AS messages,"
        " (SELECT count(*) FROM jobs) AS jobs",
    )
    assert tuple(counts[0]) == (0, 0, 0)
    assert await deliver(delivery_settings) == 0
    assert receiver.hits("/ok") == []


async def test_redirects_are_failed_attempts(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/redirect"))
    await emit(sessionmaker)
    await deliver(delivery_settings, config=DeliveryConfig())
    [message] = await messages(sessionmaker)
    [attempt] = await attempts(sessionmaker, message.id)
    assert (attempt.status_code, attempt.error) == (301, "redirects are not followed")
    assert (message.status, message.attempts) == ("pending", 1)
    assert receiver.hits("/ok") == []


async def test_an_address_refused_by_the_ssrf_guard_is_a_failed_attempt(
    settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    endpoint = await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/ok"))
    await emit(sessionmaker)
    # No allowlist: loopback receivers are refused.
    await deliver(settings, config=DeliveryConfig())
    [message] = await messages(sessionmaker)
    [attempt] = await attempts(sessionmaker, message.id)
    assert attempt.status_code is None
    assert attempt.error is not None
    assert "loopback" in attempt.error
    assert (message.status, message.attempts) == ("pending", 1)  # retried: DNS may flap
    assert (await endpoint_row(sessionmaker, endpoint.id)).failing_since is not None
    assert receiver.hits("/ok") == []


async def test_messages_of_a_disabled_endpoint_fail_unsent(
    delivery_settings: Settings,
    sessionmaker: Sessions,
    owner: TestUser,
    receiver: Receiver,
    database_url: str,
) -> None:
    endpoint = await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/ok"))
    await emit(sessionmaker)
    await sql(
        database_url,
        "UPDATE webhook_endpoints SET enabled = false, disabled_reason = 'manual' WHERE id = $1",
        endpoint.id,
    )
    assert await deliver(delivery_settings) == 1
    [message] = await messages(sessionmaker)
    assert (message.status, message.attempts) == ("failed", 0)
    assert await attempts(sessionmaker) == []
    assert receiver.hits("/ok") == []


async def test_a_stale_job_does_not_deliver_again_nor_fork_the_retries(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/status/500"))
    await emit(sessionmaker)
    async with make_delivery_worker(delivery_settings, config=DeliveryConfig()) as worker:
        await worker.run_pending()
        [message] = await messages(sessionmaker)
        # What a worker dying between our commit and marking the job done leaves behind:
        # the first job once more, besides the retry the attempt queued.
        async with sessionmaker.begin() as session:
            session.add(
                Job(kind=outbox.DELIVER_JOB, payload={"messageId": message.id}, max_attempts=5)
            )
        assert await worker.run_pending() == 1
    assert len(receiver.hits("/status/500")) == 1
    pending = [j for j in await jobs_of(sessionmaker, outbox.DELIVER_JOB) if j.status == "pending"]
    assert [job.payload["attempt"] for job in pending] == [1]


async def test_redelivery_sends_again_with_the_same_id(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/ok"))
    await emit(sessionmaker)
    async with make_delivery_worker(delivery_settings) as worker:
        await worker.run_pending()
        [message] = await messages(sessionmaker)
        async with sessionmaker.begin() as session:
            assert await redeliver(session=session, message_ids=[message.id, message.id]) == 1
        assert await worker.run_pending() == 1
    first, second = receiver.hits("/ok")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == message.id
    assert first.body == second.body
    [message] = await messages(sessionmaker)
    assert (message.status, message.attempts) == ("delivered", 2)
    assert [a.attempt for a in await attempts(sessionmaker, message.id)] == [1, 2]


async def test_a_failed_redelivery_of_a_used_up_message_does_not_disable_the_endpoint(
    delivery_settings: Settings,
    sessionmaker: Sessions,
    owner: TestUser,
    receiver: Receiver,
    database_url: str,
) -> None:
    endpoint = await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/status/500"))
    await emit(sessionmaker)
    config = replace(FAST, schedule=())
    async with make_delivery_worker(delivery_settings, config=config) as worker:
        await worker.run_pending()
        assert not (await endpoint_row(sessionmaker, endpoint.id)).enabled
        # The owner enables it again and recovers the failed message; it fails once more.
        await sql(
            database_url,
            "UPDATE webhook_endpoints SET enabled = true, disabled_reason = NULL WHERE id = $1",
            endpoint.id,
        )
        [message] = await messages(sessionmaker)
        async with sessionmaker.begin() as session:
            await redeliver(session=session, message_ids=[message.id])
        assert await worker.run_pending() == 1
    [message] = await messages(sessionmaker)
    assert (message.status, message.attempts) == ("failed", 2)
    assert (await endpoint_row(sessionmaker, endpoint.id)).enabled
    assert len(receiver.hits("/status/500")) == 2


async def test_a_message_of_a_deleted_endpoint_is_skipped(
    delivery_settings: Settings,
    sessionmaker: Sessions,
    owner: TestUser,
    receiver: Receiver,
    database_url: str,
) -> None:
    endpoint = await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/ok"))
    await emit(sessionmaker)
    await sql(database_url, "DELETE FROM webhook_endpoints WHERE id = $1", endpoint.id)
    assert await deliver(delivery_settings) == 1
    [job] = await jobs_of(sessionmaker, outbox.DELIVER_JOB)
    assert job.status == "done"
    assert receiver.hits("/ok") == []


async def test_a_malformed_payload_fails_the_job_at_once(
    delivery_settings: Settings, sessionmaker: Sessions
) -> None:
    async with sessionmaker.begin() as session:
        session.add(Job(kind=outbox.DELIVER_JOB, payload={"messageId": 7}, max_attempts=5))
    await deliver(delivery_settings)
    [job] = await jobs_of(sessionmaker, outbox.DELIVER_JOB)
    assert (job.status, job.attempts) == ("failed", 1)


async def test_ping_goes_to_one_endpoint_only(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    target = await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/ok"))
    await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/status/200"))
    async with sessionmaker.begin() as session:
        await outbox.emit(
            session=session,
            event_type="webhook.ping",
            data={"endpointId": str(target.id)},
            audience=[owner.id],
            endpoint_id=target.id,
        )
    assert await deliver(delivery_settings) == 1
    [hit] = receiver.hits("/ok")
    assert json.loads(hit.body)["type"] == "webhook.ping"
    assert receiver.hits("/status/200") == []


def test_display_url_drops_credentials_query_and_fragment() -> None:
    assert display_url("https://u:p@Example.com:8443/hook?token=x#f") == (
        "https://example.com:8443/hook"
    )
    assert display_url("http://[::1]:80/a") == "http://[::1]:80/a"
    assert display_url("https://example.com") == "https://example.com"
    assert display_url("http://[::1") == "(invalid URL)"


async def test_messages_and_events_counted_once_per_endpoint(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    for path in ("/ok", "/status/200", "/status/201"):
        await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url(path))
    for n in range(5):
        await emit(sessionmaker, data={"n": n})
    async with make_delivery_worker(delivery_settings) as worker:
        # Five at once to one endpoint: over its in-flight cap of 4, one is postponed.
        assert await worker.run_pending() >= 15
        await all_settled(sessionmaker, 15)
    async with sessionmaker() as session:
        total = await session.scalar(select(func.count()).select_from(WebhookMessage))
    assert total == 15
    ids = [hit.headers["webhook-id"] for hit in receiver.state.requests]
    assert len(ids) == len(set(ids)) == 15
    assert all(isinstance(uuid.UUID(i.removeprefix("msg_")), uuid.UUID) for i in ids)


async def test_owner_mail_is_skipped_when_the_endpoint_is_gone_or_enabled_again(
    delivery_settings: Settings,
    sessionmaker: Sessions,
    make_user: MakeUser,
    smtp_server: SmtpServer,
    database_url: str,
) -> None:
    owner = await make_user(email="owner@example.com")
    enabled = await add_endpoint(sessionmaker, owner_id=owner.id, url="https://example.com/a")
    deleted = await add_endpoint(
        sessionmaker, owner_id=owner.id, url="https://example.com/b", enabled=False
    )
    refused = await add_endpoint(
        sessionmaker, owner_id=owner.id, url="https://example.com/c", enabled=False
    )
    await sql(database_url, "DELETE FROM webhook_endpoints WHERE id = $1", deleted.id)
    smtp_server.capture.refuse.add("owner@example.com")
    async with sessionmaker.begin() as session:
        for endpoint in (enabled, deleted, refused):
            session.add(
                Job(
                    kind="webhook.disabled_mail",
                    payload={"endpointId": str(endpoint.id), "reason": "failing"},
                )
            )
        session.add(Job(kind="webhook.disabled_mail", payload={"endpointId": "nope"}))
    mailer = mail_settings(delivery_settings, smtp_server)
    assert await deliver(delivery_settings, mailer=mailer) == 4
    jobs = await jobs_of(sessionmaker, "webhook.disabled_mail")
    # Enabled again or deleted: nothing to say. Refused by the server, or malformed: failed.
    assert [(job.status, job.attempts) for job in jobs] == [
        ("done", 1),
        ("done", 1),
        ("failed", 1),
        ("failed", 1),
    ]
    assert smtp_server.received == []


async def test_a_rate_limit_slot_too_far_away_postpones_the_delivery(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/ok"), rate_limit=2)
    for n in range(3):
        await emit(sessionmaker, data={"n": n})
    config = replace(FAST, max_rate_wait=0.2)
    async with running(make_delivery_worker(delivery_settings, config=config)):
        await all_settled(sessionmaker, 3)
    arrivals = sorted(hit.received_at for hit in receiver.hits("/ok"))
    assert len(arrivals) == 3
    assert arrivals[2] - arrivals[0] >= 0.9  # two half-second gaps
    jobs = await jobs_of(sessionmaker, outbox.DELIVER_JOB)
    assert len(jobs) > 3  # the third waited in a postponed job, not in a worker slot
    assert all(a.attempt == 1 for a in await attempts(sessionmaker))


async def test_an_unusable_secret_is_a_failed_attempt_without_a_request(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    await add_endpoint(
        sessionmaker, owner_id=owner.id, url=receiver.url("/ok"), secret="whsec_short"
    )
    await emit(sessionmaker)
    await deliver(delivery_settings, config=DeliveryConfig())
    [attempt] = await attempts(sessionmaker)
    assert (attempt.status_code, attempt.error) == (
        None,
        "the endpoint's signing secret is invalid",
    )
    assert receiver.hits("/ok") == []
    async with sessionmaker.begin() as session:
        assert await redeliver(session=session, message_ids=[]) == 0
