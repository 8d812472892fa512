"""Calls made within one turn of the event loop, sent to Redis together.

Under load many requests reach the same Redis step in one turn of the loop (the rate limit,
the response cache's generations). Each Redis command costs the client far more CPU than the
server, so one command for the whole batch instead of one per request is most of the saving
(docs/performance.md). A batch is sent on the turn after its first call, i.e. after every
call in it was made: a call never gets an answer computed before it was made.

At most one batch is on its way at a time: calls made meanwhile wait for it to come back
and then go out together (group commit). Under load that makes batches larger, and the
client's CPU per request smaller, at the cost of at most one extra round trip of waiting;
when the batch on its way fails, the calls waiting behind it fail with it at once (the
callers fall back without a second wait). Every send is bounded by its client's timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class TurnBatch(Generic[Item, Result]):
    """`await batch.call(item)`: `send(items)` runs once for all the calls of a batch and
    returns one result per item, in order; its exception reaches every call of the batch."""

    def __init__(self, send: Callable[[list[Item]], Awaitable[Sequence[Result]]]) -> None:
        self._send = send
        self._pending: tuple[list[Item], asyncio.Future[Sequence[Result]]] | None = None
        self._sending = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, item: Item) -> Result:
        """The result for `item`, from a batch sent after this call was made."""
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = ([], loop.create_future())
            if not self._sending:
                loop.call_soon(self._flush)
        items, future = self._pending
        index = len(items)
        items.append(item)
        # Shielded: a caller that gives up (timeout, disconnect) does not cancel the others.
        results = await asyncio.shield(future)
        return results[index]

    def _flush(self) -> None:
        if self._pending is None or self._sending:
            return
        items, future = self._pending
        self._pending = None
        self._sending = True
        task = asyncio.get_running_loop().create_task(self._run(items, future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, items: list[Item], future: asyncio.Future[Sequence[Result]]) -> None:
        try:
            results = await self._send(items)
        except BaseException as exc:
            self._sending = False
            _fail(future, exc)
            if self._pending is not None:
                _fail(self._pending[1], exc)
                self._pending = None
            if not isinstance(exc, Exception):
                raise
        else:
            self._sending = False
            future.set_result(results)
            self._flush()


def _fail(future: asyncio.Future[Sequence[Result]], exc: BaseException) -> None:
    future.set_exception(exc)
    future.exception()  # retrieved: every caller may have given up already
