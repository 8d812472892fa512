"""Micro-batching: many concurrent deliveries share one database round trip.

A busy worker runs dozens of deliveries at once, and each used to load its message and record
its outcome with statements of its own (a pool checkout, its pre-ping, BEGIN, the statement,
COMMIT: about a millisecond of CPU and several round trips each). A `Batcher` collects the
items submitted while a batch is being gathered and hands them to one `flush` call; each
submitter awaits its own result. The first item of a batch waits at most `linger` seconds (a
few ms: small beside a webhook's latency budget) or until `max_size` items are in; while one
flush runs, the next batch gathers, so a flood of items never waits behind more than one
flush.

One batcher serves one event loop (its futures belong to it); `Batchers` keeps one per key
(the worker's sessionmaker: a batch never mixes two workers' databases or connections).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
Key = TypeVar("Key")


class Batcher(Generic[Item, Result]):
    """Calls `flush(items)` (which returns one result per item, in order) for items submitted
    close together; see the module docstring."""

    def __init__(
        self,
        flush: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        *,
        max_size: int,
        linger: float,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._flush = flush
        self.max_size = max_size
        self.linger = linger
        self._items: list[Item] = []
        self._futures: list[asyncio.Future[Result]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        """`item`'s result, once the batch it joined has been flushed (its error if the flush
        raised). Cancelling the wait does not take the item out of its batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        if len(self._items) >= self.max_size:
            self._start()
        elif self._timer is None:
            self._timer = loop.call_later(self.linger, self._start)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # Nobody will read the result now: take it when it comes, so that a failed flush
            # (the engine closing at shutdown) is not reported as a never-retrieved error.
            future.add_done_callback(_consume)
            raise

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        if items:
            task = asyncio.get_running_loop().create_task(self._run(items, futures))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _run(self, items: list[Item], futures: list[asyncio.Future[Result]]) -> None:
        try:
            results = await self._flush(items)
            if len(results) != len(items):
                raise RuntimeError(f"flush returned {len(results)} results for {len(items)}")
        except BaseException as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Batchers(Generic[Key, Item, Result]):
    """One `Batcher` per key and event loop, made on first use by `make(key)`."""

    def __init__(self, make: Callable[[Key], Batcher[Item, Result]]) -> None:
        self._make = make
        self._batchers: dict[Key, tuple[asyncio.AbstractEventLoop, Batcher[Item, Result]]] = {}

    def get(self, key: Key) -> Batcher[Item, Result]:
        """The batcher of `key` on the running loop."""
        loop = asyncio.get_running_loop()
        entry = self._batchers.get(key)
        if entry is None or entry[0] is not loop:
            if len(self._batchers) > 64:
                # Keys of finished loops (tests, restarted workers): nothing refers to them.
                self._batchers = {k: v for k, v in self._batchers.items() if not v[0].is_closed()}
            entry = (loop, self._make(key))
            self._batchers[key] = entry
        return entry[1]
