"""Reused greenlets (`service.infra.greenlets.spawn`): SQLAlchemy's `greenlet_spawn` protocol,
without a new greenlet per call. Real PostgreSQL for the session checks."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, engine, result, session
from sqlalchemy.util import await_

from service.http import adapter
from service.infra import greenlets
from service.infra.greenlets import spawn

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


async def _double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


def _sync_sum(*values: int) -> int:
    """Sync code awaiting coroutines, as SQLAlchemy's sync session does."""
    return sum(await_(_double(value)) for value in values)


async def test_sync_code_awaits_and_returns() -> None:
    assert await spawn(_sync_sum, 1, 2, 3) == 12


async def test_a_worker_is_reused_call_after_call() -> None:
    await spawn(_sync_sum, 1)
    before = greenlets.created()
    for n in range(20):
        assert await spawn(_sync_sum, n) == 2 * n
    assert greenlets.created() == before


async def test_calls_in_flight_at_once_each_get_a_worker() -> None:
    gate = asyncio.Event()

    def wait_for_gate(value: int) -> int:
        await_(gate.wait())
        return value

    calls = [asyncio.create_task(spawn(wait_for_gate, n)) for n in range(5)]
    await asyncio.sleep(0.01)
    gate.set()
    assert await asyncio.gather(*calls) == [0, 1, 2, 3, 4]
    # Afterwards they are all idle: five more at once create none.
    before = greenlets.created()
    gate.clear()
    calls = [asyncio.create_task(spawn(wait_for_gate, n)) for n in range(5)]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*calls)
    assert greenlets.created() == before


async def test_the_sync_code_sees_the_callers_context_variables() -> None:
    async def as_user(name: str) -> str:
        WHO.set(name)
        await asyncio.sleep(0)
        return await spawn(WHO.get)

    assert list(await asyncio.gather(as_user("ann"), as_user("bob"))) == ["ann", "bob"]
    # An idle worker holds no caller's context (it would keep a request's objects alive).
    assert await spawn(WHO.get) == "nobody"


async def test_an_exception_of_the_sync_code_reaches_the_caller() -> None:
    def fails() -> None:
        await_(asyncio.sleep(0))
        raise LookupError("from the sync side")

    with pytest.raises(LookupError, match="from the sync side"):
        await spawn(fails)
    assert await spawn(_sync_sum, 4) == 8  # the worker is still good


async def test_an_awaited_error_is_thrown_into_the_sync_code() -> None:
    async def broken() -> None:
        raise ValueError("from the coroutine")

    def recovers() -> str:
        try:
            await_(broken())
        except ValueError as error:
            return f"caught {error}"
        return "not raised"

    assert await spawn(recovers) == "caught from the coroutine"


async def test_cancelling_the_caller_cancels_the_awaited_coroutine() -> None:
    started = asyncio.Event()
    seen: list[str] = []

    def sleeps() -> None:
        started.set()
        try:
            await_(asyncio.sleep(30))
        except asyncio.CancelledError:
            seen.append("cancelled in the sync code")
            raise

    call = asyncio.create_task(spawn(sleeps))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert seen == ["cancelled in the sync code"]
    assert await spawn(_sync_sum, 5) == 10


async def test_require_await_is_kept() -> None:
    with pytest.raises(Exception, match="async execution"):
        await spawn(lambda: 1, _require_await=True)


@pytest.mark.parametrize("module", [engine, result, session])
def test_sqlalchemy_asyncio_runs_through_spawn(module: Any) -> None:
    greenlets.use_with_sqlalchemy()
    assert module.greenlet_spawn is spawn


def test_the_adapter_runs_requests_through_spawn() -> None:
    assert vars(adapter)["spawn"] is spawn


async def test_sessions_reuse_workers_on_postgresql(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    greenlets.use_with_sqlalchemy()

    async def one_session() -> int:
        async with sessionmaker() as db_session, db_session.begin():
            value = await db_session.scalar(text("SELECT 41 + 1"))
            assert isinstance(value, int)
            return value

    assert await one_session() == 42
    before = greenlets.created()
    assert await asyncio.gather(*(one_session() for _ in range(3))) == [42] * 3
    for _ in range(10):
        assert await one_session() == 42
    # At most one worker per session in flight at once, and none for the sequential ones.
    assert greenlets.created() - before <= 3


async def test_requests_create_no_greenlet_once_warm(
    client: httpx.AsyncClient, make_user: Callable[..., Any]
) -> None:
    user = await make_user()
    headers = {"Authorization": f"Token {user.token}"}
    for _ in range(3):
        assert (await client.get("/api/v1/user", headers=headers)).status_code == 200
    before = greenlets.created()
    for _ in range(10):
        assert (await client.get("/api/v1/user", headers=headers)).status_code == 200
        assert (await client.get("/api/v1/tags")).status_code == 200
    assert greenlets.created() == before
