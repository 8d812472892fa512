"""Run sync code that awaits (`sqlalchemy.util.await_`) in reused greenlets.

SQLAlchemy's asyncio extension runs every `AsyncSession`/`AsyncConnection` call (execute,
scalar, commit, close, ...) in a new greenlet, and the adapter runs each request's Flask app in
one. On CPython 3.11 a new greenlet's first frame allocates a 16 KiB frame stack with `mmap`,
freed with `munmap` when the greenlet ends: 5-7 such cycles per signed-in write, each with its
page faults, which cost ~30 us of system time apiece on our VMs (docs/performance.md, "Third
round"). `spawn` keeps finished greenlets and runs the next call in one of them, so their
frame stacks stay mapped; it behaves as `sqlalchemy.util.greenlet_spawn` otherwise (the same
`await_` protocol, the caller's context variables, exceptions thrown into the sync code).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from greenlet import GreenletExit, getcurrent, greenlet
from sqlalchemy import exc

T = TypeVar("T")

# Idle greenlets kept per thread; more are created when more calls are in flight at once.
MAX_IDLE = 256


class _Finished:
    """What a worker hands back when the sync function returned or raised."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any, error: BaseException | None) -> None:
        self.value = value
        self.error = error


class _Worker(greenlet):  # type: ignore[misc]
    """A greenlet that runs one sync function after another, each for the greenlet that
    switched to it (its parent for that call)."""

    # What `sqlalchemy.util.await_` checks before switching to the parent.
    __sqlalchemy_greenlet_provider__ = True

    def __init__(self) -> None:
        super().__init__(self._serve)

    def _serve(self, *first: Any) -> None:
        call: Any = first
        while True:
            fn, args, kwargs = call
            try:
                finished = _Finished(fn(*args, **kwargs), None)
            except GreenletExit:
                raise  # the worker itself is being collected: end it
            except BaseException as error:  # handed to the caller, who raises it
                finished = _Finished(None, error)
            # Nothing of this call outlives it while the worker waits for the next.
            fn = args = kwargs = call = None
            call = self.parent.switch(finished)


class _Idle(threading.local):
    """The idle workers of one thread (a greenlet only ever runs in its own thread)."""

    def __init__(self) -> None:
        self.workers: list[_Worker] = []
        self.created = 0


_idle = _Idle()


def created() -> int:
    """How many workers this thread has created so far (for tests and benchmarks)."""
    return _idle.created


async def spawn(fn: Callable[..., T], *args: Any, _require_await: bool = False, **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` in a greenlet where it may `await_` coroutines; its result.

    A drop-in for `sqlalchemy.util.greenlet_spawn`, reusing greenlets.
    """
    idle = _idle
    if idle.workers:
        worker = idle.workers.pop()
    else:
        worker = _Worker()
        idle.created += 1
    caller = getcurrent()
    worker.parent = caller
    worker.gr_context = caller.gr_context
    switched = False
    result = worker.switch(fn, args, kwargs)
    while not isinstance(result, _Finished):
        switched = True
        try:
            value = await result
        except BaseException:
            result = worker.throw(*sys.exc_info())
        else:
            result = worker.switch(value)
    # Forget the caller's context: an idle worker must not keep a request's objects alive.
    worker.gr_context = None
    if len(idle.workers) < MAX_IDLE:
        idle.workers.append(worker)
    if result.error is not None:
        raise result.error
    if _require_await and not switched:
        raise exc.AwaitRequired(
            "The current operation required an async execution but none was detected."
        )
    return result.value  # type: ignore[no-any-return]


def use_with_sqlalchemy() -> None:
    """Make SQLAlchemy's asyncio extension (engines, connections, sessions, results) run its
    calls through `spawn`. Idempotent; checked by tests/infra/test_greenlets.py."""
    from sqlalchemy.ext.asyncio import engine, result, session

    for module in (engine, result, session):
        if not hasattr(module, "greenlet_spawn"):
            raise RuntimeError(f"{module.__name__} no longer has greenlet_spawn: re-check")
        module.greenlet_spawn = spawn  # type: ignore[attr-defined]
