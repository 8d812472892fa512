"""Prometheus series of the service, and the listener that serves them (METRICS_PORT).

The series live here, at the bottom layer, so that any layer may record into them. With
several worker processes (`conduit serve --workers N`) the supervisor points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before it starts them: prometheus-client then
keeps every value in a memory-mapped file per process, and the supervisor's listener sums the
files, so one scrape sees the whole instance. It must be set before prometheus-client is
imported in a worker; spawned workers inherit it from the supervisor's environment.

Nothing here costs a request anything unless METRICS_PORT is set: the HTTP middleware that
records into these series is only in the pipeline then (`service.http.pipeline`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextvars import ContextVar
from pathlib import Path
from threading import Thread
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

logger = logging.getLogger("conduit.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Latency buckets for API requests (seconds): most answers take milliseconds, a password hash
# a few hundred, and anything past the statement timeout (5 s) is a problem to alert on.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "conduit_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "conduit_http_request_duration_seconds",
    "Time from the request reaching the app to its answer, by method and route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "conduit_http_requests_in_flight",
    "Requests being served now (including those waiting for a concurrency slot).",
    multiprocess_mode="livesum",
)
# Sampled every few seconds by each worker (`service.http.metrics.PoolSampler`): a scrape in
# the supervisor cannot read the workers' pools, and sampling keeps them off the request path.
ADAPTER_WAITING = Gauge(
    "conduit_adapter_waiting_requests",
    "Requests waiting for one of the adapter's concurrency slots (THREADS per process).",
    multiprocess_mode="livesum",
)
DB_POOL_CONNECTIONS = Gauge(
    "conduit_db_pool_connections",
    "Database pool connections by state (checked_out: in use; idle: pooled and free).",
    ["state"],
    multiprocess_mode="livesum",
)
DB_POOL_LIMIT = Gauge(
    "conduit_db_pool_limit_connections",
    "Most database connections the pools may open (pool size plus overflow).",
    multiprocess_mode="livesum",
)
REDIS_POOL_CONNECTIONS = Gauge(
    "conduit_redis_pool_connections",
    "Redis pool connections by state (in_use, idle).",
    ["state"],
    multiprocess_mode="livesum",
)
PASSWORD_HASHES = Gauge(
    "conduit_password_hashes",
    "Password hashes and verifications by state (running: in a slot; waiting: for one).",
    ["state"],
    multiprocess_mode="livesum",
)
JOBS_PENDING = Gauge(
    "conduit_jobs_pending",
    "Jobs due and not yet taken, by kind (every worker process reads the same table).",
    ["kind"],
    multiprocess_mode="max",
)
JOBS_OLDEST_AGE = Gauge(
    "conduit_jobs_oldest_pending_age_seconds",
    "How long the oldest due job of each kind has been waiting.",
    ["kind"],
    multiprocess_mode="max",
)
RATE_LIMIT_REFUSALS = Counter(
    "conduit_rate_limit_refusals",
    "Requests refused with 429, by the limit (policy) that refused them.",
    ["policy"],
)
# Recorded by the job worker: served by `conduit worker` on WORKER_METRICS_PORT, or by
# `conduit serve` in one process when the worker runs inside it.
WEBHOOK_DELIVERIES = Counter(
    "conduit_webhook_deliveries",
    "Webhook delivery attempts by outcome (delivered, gone, http_error, no_answer, postponed).",
    ["outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "conduit_webhook_delivery_duration_seconds",
    "Time of a webhook delivery attempt's HTTP request.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
CACHE_OPERATIONS = Counter(
    "conduit_cache_operations",
    "Read-cache operations by outcome (hits, misses, loads, errors, bypassed).",
    ["outcome"],
)
RESPONSE_CACHE = Counter(
    "conduit_response_cache",
    "Anonymous reads at the response cache by outcome.",
    ["outcome"],
)

# A one-slot holder the HTTP middleware sets per request; a Flask `before_request` hook puts
# the matched route template in it (Flask alone knows the route). Unset when metrics are off.
ROUTE_SLOT: ContextVar[list[str | None] | None] = ContextVar("conduit_route_slot", default=None)


def note_route(rule: str) -> None:
    """Record the route template of the current request, if metrics are being recorded."""
    slot = ROUTE_SLOT.get()
    if slot is not None:
        slot[0] = rule


def prepare_multiprocess_dir() -> Path:
    """Point PROMETHEUS_MULTIPROC_DIR at an empty directory (the one already set, emptied of a
    previous run's files, or a fresh temporary one) and return it."""
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        # A previous run's files would be summed with this run's.
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="conduit-metrics-"))
        os.environ[MULTIPROC_ENV] = str(path)
    return path


def remove_multiprocess_dir(path: Path) -> None:
    """Remove the directory `prepare_multiprocess_dir` created (not one that was configured)."""
    os.environ.pop(MULTIPROC_ENV, None)
    if path.name.startswith("conduit-metrics-"):
        shutil.rmtree(path, ignore_errors=True)


def mark_process_dead(pid: int) -> None:
    """Drop the live gauges of an exited worker (its counters stay in the sums)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def start_server(host: str, port: int) -> Thread:
    """Serve /metrics on `host`:`port` from a daemon thread: the sum over the worker processes
    when PROMETHEUS_MULTIPROC_DIR is set, this process's series otherwise."""
    registry: CollectorRegistry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server: Any
    server, thread = start_http_server(port, addr=host, registry=registry)
    logger.info("serving metrics at http://%s:%d/metrics", host, server.server_port)
    return thread
