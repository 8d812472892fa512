"""One endpoint never delays others: the in-flight cap, the circuit breaker, rate limits, and
the worker slots of their own that deliveries run in."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from service.infra.settings import Settings
from service.jobs import JobContext, Worker, WorkerConfig, enqueue
from service.webhooks.config import DeliveryConfig
from service.webhooks.gates import EndpointGates, Postponed, Ticket
from service.webhooks.handler import DeliveryHandler
from service.webhooks.rate_limit import RateLimiter
from tests.factories import TestUser
from tests.webhooks.receivers import Receiver, running_receiver
from tests.webhooks.support import (
    FAST,
    Sessions,
    add_endpoint,
    all_settled,
    attempts,
    emit,
    eventually,
    make_delivery_worker,
    messages,
    running,
    seconds_between,
    sql,
)


def ticket(admitted: Ticket | Postponed) -> Ticket:
    assert isinstance(admitted, Ticket), admitted
    return admitted


def postponed(admitted: Ticket | Postponed) -> Postponed:
    assert isinstance(admitted, Postponed), admitted
    return admitted


async def test_in_flight_cap_postpones_to_spread_slots() -> None:
    gates = EndpointGates(DeliveryConfig(busy_delay=1.0, max_queue_wait=0.0))
    key = uuid.uuid4()
    first = ticket(await gates.admit(key, cap=2, failing=False))
    ticket(await gates.admit(key, cap=2, failing=False))
    assert gates.in_flight(key) == 2
    waits = [postponed(await gates.admit(key, cap=2, failing=False)) for _ in range(3)]
    assert {w.reason for w in waits} == {"endpoint at its in-flight cap"}
    assert all(w.delay >= 0.9 for w in waits)
    # Each later job gets a later slot, so a backlog does not return all at once.
    assert waits[0].delay < waits[2].delay
    ticket(await gates.admit(uuid.uuid4(), cap=2, failing=False))  # other endpoints: free
    first.release(failed=False)
    first.release(failed=False)  # idempotent
    assert gates.in_flight(key) == 1
    ticket(await gates.admit(key, cap=2, failing=False))


async def test_at_the_cap_a_short_wait_happens_in_the_job() -> None:
    gates = EndpointGates(DeliveryConfig(max_queue_wait=2.0))
    key = uuid.uuid4()
    first = ticket(await gates.admit(key, cap=1, failing=False))
    waiting = asyncio.create_task(gates.admit(key, cap=1, failing=False))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    began = time.monotonic()
    first.release(failed=False)
    second = ticket(await asyncio.wait_for(waiting, 1))
    assert time.monotonic() - began < 0.1  # the freed place went to the waiting job at once
    # Known to be slow now (the first attempt took a while): no waiting, postponed at once.
    await asyncio.sleep(0.3)
    second.release(failed=False)
    third = ticket(await gates.admit(key, cap=1, failing=False))
    for _ in range(8):
        third.release(failed=False)
        third = ticket(await gates.admit(key, cap=1, failing=False))
    gates.release(key, probe=False, failed=False, retry_after=None, seconds=30.0)
    gates.release(key, probe=False, failed=False, retry_after=None, seconds=30.0)
    third = ticket(await gates.admit(key, cap=1, failing=False))
    began = time.monotonic()
    assert postponed(await gates.admit(key, cap=1, failing=False)).delay > 0.5
    assert time.monotonic() - began < 0.1


async def test_circuit_breaker_opens_after_a_failure_then_lets_one_trial_through() -> None:
    gates = EndpointGates(DeliveryConfig(breaker_cooldowns=(0.2, 10.0), busy_delay=0.1))
    key = uuid.uuid4()
    ticket(await gates.admit(key, cap=4, failing=False)).release(failed=True)
    wait = postponed(await gates.admit(key, cap=4, failing=False))
    assert wait.reason == "circuit open"
    assert 0.1 < wait.delay <= 0.25
    await asyncio.sleep(0.25)
    trial = ticket(await gates.admit(key, cap=4, failing=False))
    assert trial.probe
    assert "half-open" in postponed(await gates.admit(key, cap=4, failing=False)).reason
    trial.release(failed=True)  # second failure: a longer cool-down
    assert postponed(await gates.admit(key, cap=4, failing=False)).delay > 5
    # A manual redelivery skips the cool-down but is still the only trial.
    manual = ticket(await gates.admit(key, cap=4, failing=False, manual=True))
    assert manual.probe
    manual.release(failed=False)
    tickets = [ticket(await gates.admit(key, cap=4, failing=False)) for _ in range(4)]
    assert not any(t.probe for t in tickets)


async def test_failing_endpoints_get_one_trial_at_a_time_and_retry_after_holds_them() -> None:
    gates = EndpointGates(DeliveryConfig(breaker_cooldowns=(0.0,)))
    key = uuid.uuid4()
    trial = ticket(await gates.admit(key, cap=4, failing=True))  # another process saw it fail
    assert trial.probe
    postponed(await gates.admit(key, cap=4, failing=True))
    trial.release(failed=True, retry_after=60)
    assert postponed(await gates.admit(key, cap=4, failing=True)).delay > 50
    # Releasing without an attempt (postponed by the rate limit, cancelled) changes nothing.
    other = uuid.uuid4()
    ticket(await gates.admit(other, cap=1, failing=False)).release(failed=None)
    ticket(await gates.admit(other, cap=1, failing=False))


async def test_slow_endpoint_does_not_delay_a_fast_one(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    with running_receiver("127.0.0.1") as slow:
        slow.state.slow_seconds = 4.0
        slow_endpoint = await add_endpoint(sessionmaker, owner_id=owner.id, url=slow.url("/slow"))
        fast_endpoint = await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/ok"))
        settings = delivery_settings.model_copy(update={"webhook_endpoint_concurrency": 2})
        worker = make_delivery_worker(
            settings,
            config=replace(FAST, busy_delay=0.5),
            kind_concurrency={"webhook.deliver": 4},
            shutdown_grace=0.1,
        )
        async with running(worker):
            started = time.monotonic()
            for n in range(10):
                await emit(sessionmaker, data={"n": n})

            async def fast_done() -> bool:
                found = await messages(sessionmaker)
                fast = [m for m in found if m.endpoint_id == fast_endpoint.id]
                return len(fast) == 10 and all(m.status == "delivered" for m in fast)

            await eventually(fast_done, within=10)
            elapsed = time.monotonic() - started
            slow_now = [
                m for m in await messages(sessionmaker) if m.endpoint_id == slow_endpoint.id
            ]
            slow_hits = len(slow.hits("/slow"))
        # Every fast delivery went through while the slow receiver held its first requests.
        assert elapsed < 3.0
        assert slow_hits == 2  # the cap: two in flight, the rest postponed
        assert all(m.status == "pending" and m.attempts == 0 for m in slow_now)
        assert len(receiver.hits("/ok")) == 10


async def test_an_open_circuit_postpones_deliveries_without_counting_attempts(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    dead = await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/status/500"))
    await emit(sessionmaker)
    handler = DeliveryHandler(replace(FAST, breaker_cooldowns=(30.0,)))
    async with make_delivery_worker(delivery_settings, handler=handler) as worker:
        await worker.run_pending()
        assert len(receiver.hits("/status/500")) == 1
        healthy = await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/ok"))
        for _ in range(3):
            await emit(sessionmaker)
        await asyncio.sleep(0.1)  # the first message's retry is due now too
        await worker.run_pending()

    assert len(receiver.hits("/status/500")) == 1  # no request while the circuit is open
    assert len(receiver.hits("/ok")) == 3
    now = datetime.now(UTC)
    waiting = [m for m in await messages(sessionmaker) if m.endpoint_id == dead.id]
    assert [m.attempts for m in waiting] == [1, 0, 0, 0]  # postponing uses up no attempt
    for message in waiting:
        assert message.status == "pending"
        assert message.next_attempt_at is not None
        assert seconds_between(message.next_attempt_at, now) > 20
    assert all(
        m.status == "delivered" for m in await messages(sessionmaker) if m.endpoint_id == healthy.id
    )
    assert len(await attempts(sessionmaker)) == 4


async def test_rate_limit_spaces_deliveries_across_workers(
    delivery_settings: Settings,
    sessionmaker: Sessions,
    owner: TestUser,
    receiver: Receiver,
    database_url: str,
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/ok"), rate_limit=5)
    for n in range(8):
        await emit(sessionmaker, data={"n": n})
    # Two workers with handlers of their own, like two processes: Redis spaces them together.
    lanes = {"webhook.deliver": 2}
    first = make_delivery_worker(delivery_settings, name="first", kind_concurrency=lanes)
    second = make_delivery_worker(delivery_settings, name="second", kind_concurrency=lanes)
    async with running(first, second):
        await all_settled(sessionmaker, 8)
    sent_by = await sql(
        database_url,
        "SELECT DISTINCT j.locked_by FROM jobs j JOIN webhook_attempts a"
        " ON a.message_id = j.payload->>'messageId' AND a.attempt = 1",
    )
    assert {row["locked_by"] for row in sent_by} == {"first", "second"}
    arrivals = sorted(hit.received_at for hit in receiver.hits("/ok"))
    assert len(arrivals) == 8
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.15  # 1/5 s apart, less scheduling noise
    assert arrivals[-1] - arrivals[0] >= 7 * 0.18


async def test_rate_limiter_reserves_slots_in_redis_or_in_memory(settings: Settings) -> None:
    assert settings.redis_url is not None
    redis = Redis.from_url(settings.redis_url)
    try:
        for limiter_settings in (settings, settings.model_copy(update={"redis_url": None})):
            limiter = RateLimiter()
            key = uuid.uuid4()
            waits = [
                await limiter.reserve(key, rate=2, max_wait=1.2, settings=limiter_settings)
                for _ in range(4)
            ]
            assert waits[0] == 0
            assert 0.4 <= waits[1] <= 0.5
            assert 0.9 <= waits[2] <= 1.0
            assert -1.5 <= waits[3] <= -1.3  # too far: nothing reserved, come back later
            await limiter.aclose()
        assert await redis.exists(f"whrl:{key}") == 0  # the in-memory run touched no key
        # Redis away: the limiter falls back to memory instead of failing the delivery.
        away = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
        limiter = RateLimiter()
        assert await limiter.reserve(uuid.uuid4(), rate=1, max_wait=1, settings=away) == 0
        await limiter.aclose()
    finally:
        await redis.aclose()


async def test_kinds_with_their_own_slots_do_not_starve_others(
    settings: Settings, sessionmaker: Sessions
) -> None:
    release = asyncio.Event()
    running_now: dict[str, int] = {"hook": 0, "mail": 0}
    peak = {"hook": 0}
    mailed = asyncio.Event()

    async def hook(payload: dict[str, Any], context: JobContext) -> None:
        running_now["hook"] += 1
        peak["hook"] = max(peak["hook"], running_now["hook"])
        await release.wait()
        running_now["hook"] -= 1

    async def mail(payload: dict[str, Any], context: JobContext) -> None:
        mailed.set()

    async with sessionmaker.begin() as session:
        for _ in range(5):
            await enqueue(session=session, kind="test.hook", payload={})
    config = replace(
        WorkerConfig.from_settings(settings, kind_concurrency={"test.hook": 3}),
        concurrency=1,
        poll_interval=0.2,
        shutdown_grace=1.0,
    )
    worker = Worker(settings, config, handlers={"test.hook": hook, "test.mail": mail})
    assert worker.total_concurrency == 4
    async with running(worker):
        await eventually(lambda: running_now["hook"] == 3)
        async with sessionmaker.begin() as session:
            await enqueue(session=session, kind="test.mail", payload={})
        await asyncio.wait_for(mailed.wait(), 5)  # not stuck behind the hooks
        release.set()
        await eventually(lambda: running_now["hook"] == 0 and peak["hook"] == 3)
    assert peak["hook"] == 3
