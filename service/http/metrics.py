"""Recording the Prometheus series (`service.infra.metrics`) of the served app.

Only in the pipeline when METRICS_PORT is set (`service.http.pipeline`):

- `MetricsMiddleware`, the outermost layer: counts every answer by method, route template
  and status, times it, and keeps the in-flight gauge. The route template is known only
  inside Flask: the middleware hands a one-slot holder down in a ContextVar and a
  `before_request` hook fills it in (`service.infra.metrics.note_route`). An answer Flask
  did not route is labelled `unmatched` when it is a 404, `none` otherwise (a 429 of the
  rate limiter, a response-cache hit, a 413 of the adapter).
- `PoolSampler`, a lifespan resource: every few seconds copies the pool and cache figures
  into the series, so that the request path does not pay for them and the supervisor's
  scrape (another process) sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from service.caching.store import CacheState, Counters
from service.http.types import ASGIApp, Message, Receive, Scope, Send
from service.infra import metrics
from service.infra.db import DatabaseState
from service.infra.redis import RedisState
from service.jobs.queue import backlog

logger = logging.getLogger("conduit.metrics")

# Any other method is counted as OTHER: a client must not be able to mint label values.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SAMPLE_SECONDS = 5.0
# The job backlog is one query per sample: bounded, so a slow database cannot pile them up.
BACKLOG_TIMEOUT_SECONDS = 2.0


class MetricsMiddleware:
    """ASGI wrapper recording each HTTP request's route, status and duration."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The labelled children, looked up once: `labels()` takes a lock and builds its key
        # on every call. Bounded: routes are templates, methods a fixed set.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, then count it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        slot: list[str | None] = [None]
        status = 500  # if the app raises before answering, Hypercorn answers 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = metrics.ROUTE_SLOT.set(slot)
        metrics.HTTP_IN_FLIGHT.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            elapsed = time.perf_counter() - started
            metrics.HTTP_IN_FLIGHT.dec()
            metrics.ROUTE_SLOT.reset(token)
            method = scope.get("method", "GET")
            if method not in METHODS:
                method = "OTHER"
            route = slot[0] or route_label(status)
            series = self._series.get((method, route, status))
            if series is None:
                series = self._series[method, route, status] = (
                    metrics.HTTP_REQUESTS.labels(method, route, str(status)),
                    metrics.HTTP_LATENCY.labels(method, route),
                )
            series[0].inc()
            series[1].observe(elapsed)


def route_label(status: int) -> str:
    """The route label of an answer that Flask did not route."""
    return "unmatched" if status == 404 else "none"


class PoolSampler:
    """Copies the pools' usage and the caches' counters into the series every few seconds."""

    def __init__(
        self,
        *,
        database: DatabaseState,
        redis: RedisState,
        cache: CacheState,
        waiting: Callable[[], int],
        hashing: Callable[[], tuple[int, int]],
        interval: float = SAMPLE_SECONDS,
    ) -> None:
        self.database = database
        self.redis = redis
        self.cache = cache
        self.waiting = waiting
        self.hashing = hashing
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        # The counters as last copied: the series grow by the difference.
        self._copied: dict[tuple[str, str], int] = {}
        self._job_kinds: set[str] = set()

    async def startup(self) -> None:
        """Start sampling on the serving loop."""
        self._task = asyncio.create_task(self._run(), name="conduit-metrics-sampler")

    async def shutdown(self) -> None:
        """Stop sampling, after one last copy of the counters."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.sample()

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
                await asyncio.wait_for(self.sample_jobs(), BACKLOG_TIMEOUT_SECONDS)
            except Exception as exc:
                # A figure missing from a scrape beats a sampler that stopped for good.
                logger.warning("sampling the metrics failed: %r", exc)
            await asyncio.sleep(self.interval)

    def sample(self) -> None:
        """Copy the current figures into the series."""
        metrics.ADAPTER_WAITING.set(self.waiting())
        running, queued = self.hashing()
        metrics.PASSWORD_HASHES.labels("running").set(running)
        metrics.PASSWORD_HASHES.labels("waiting").set(queued)
        engine = self.database.engine
        if engine is not None:
            pool: Any = engine.sync_engine.pool
            metrics.DB_POOL_CONNECTIONS.labels("checked_out").set(pool.checkedout())
            metrics.DB_POOL_CONNECTIONS.labels("idle").set(pool.checkedin())
            settings = self.database.settings
            metrics.DB_POOL_LIMIT.set(settings.db_pool_size + settings.db_max_overflow)
        client = self.redis.client
        if client is not None:
            redis_pool: Any = client.connection_pool
            in_use = len(getattr(redis_pool, "_in_use_connections", ()))
            idle = len(getattr(redis_pool, "_available_connections", ()))
            metrics.REDIS_POOL_CONNECTIONS.labels("in_use").set(in_use)
            metrics.REDIS_POOL_CONNECTIONS.labels("idle").set(idle)
        self._copy("cache", self.cache.stats, metrics.CACHE_OPERATIONS)
        if self.cache.response_stats is not None:
            self._copy("response", self.cache.response_stats, metrics.RESPONSE_CACHE)

    async def sample_jobs(self) -> None:
        """Read the job backlog by kind into the series (one query)."""
        engine = self.database.autocommit_engine
        if engine is None:
            return
        async with engine.connect() as connection:
            pending = await backlog(connection)
        # A kind whose backlog emptied reads 0, not its last value.
        for kind in self._job_kinds - pending.keys():
            metrics.JOBS_PENDING.labels(kind).set(0)
            metrics.JOBS_OLDEST_AGE.labels(kind).set(0)
        for kind, (count, age) in pending.items():
            metrics.JOBS_PENDING.labels(kind).set(count)
            metrics.JOBS_OLDEST_AGE.labels(kind).set(age)
        self._job_kinds |= pending.keys()

    def _copy(self, prefix: str, counters: Counters, series: Any) -> None:
        for outcome, value in counters.as_dict().items():
            key = (prefix, outcome)
            grown = value - self._copied.get(key, 0)
            if grown > 0:
                series.labels(outcome).inc(grown)
            self._copied[key] = value
