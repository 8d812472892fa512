"""`conduit serve --workers 2 ` with METRICS_PORT, as a real process on a real PostgreSQL and
Redis: one scrape of the supervisor's listener sums the series of both workers; the API port
has no /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from service.infra.metrics import MULTIPROC_ENV
from service.infra.settings import Settings
from tests.cli import ROOT, child_environment, start, wait_for_line
from tests.conftest import TEST_SECRET
from tests.net import free_port

WORKERS = 2
ROUTE = "/healthz"


@contextmanager
def _serving(
    tmp_path: Path, settings: Settings, redis_url: str, workers: int, **extra: str
) -> Iterator[tuple[str, str]]:
    """`conduit serve --workers N` with METRICS_PORT: its API base URL and metrics URL."""
    assert settings.database_url is not None
    port, metrics_port = free_port(), free_port()
    env = child_environment(
        tmp_path / "data",
        APP_ENV="test",
        DATABASE_URL=settings.database_url,
        REDIS_URL=redis_url,
        SECRET_KEY=TEST_SECRET,
        LOG_FORMAT="json",
        RATE_LIMIT_ENABLED="false",
        WORKER_IN_PROCESS="false",
        THREADS="4",
        DB_POOL_SIZE="4",
        METRICS_PORT=str(metrics_port),
    )
    # Only the test's own multiprocess directory, if any.
    env.pop(MULTIPROC_ENV, None)
    env.update(extra)
    log = tmp_path / "serve.log"
    proc = start(log, env, "serve", "--workers", str(workers), "--bind", f"127.0.0.1:{port}")
    try:
        wait_for_line(log, "Running on", proc, timeout=60)
        deadline = time.monotonic() + 60
        while log.read_text().count("Running on") < max(workers, 1):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def served(
    tmp_path: Path, settings: Settings, server_urls: tuple[str, str]
) -> Iterator[tuple[str, str, Path]]:
    """API base URL, metrics URL and the metrics directory of a 2-worker `conduit serve`."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    # A previous run's file: the supervisor must not sum it with this run's.
    (metrics_dir / "counter_1.db").write_bytes(b"stale")
    extra = {MULTIPROC_ENV: str(metrics_dir)}
    with _serving(tmp_path, settings, server_urls[1], WORKERS, **extra) as (base, metrics_url):
        yield base, metrics_url, metrics_dir


def _scraped(text: str, name: str, **labels: str) -> float:
    """The sum of the samples `name` whose labels include `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def _per_worker(metrics_dir: Path) -> dict[str, float]:
    """GET /healthz requests answered 200 as counted in each worker's own file."""
    counts: dict[str, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        for family in MultiProcessCollector.merge([str(path)], accumulate=True):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "conduit_http_requests_total" and labels["route"] == ROUTE:
                    counts[path.name] = counts.get(path.name, 0.0) + sample.value
    return counts


async def _get_healthz(base: str) -> None:
    # A connection of its own per request: the kernel spreads the accepts over the workers.
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        assert (await http.get(ROUTE)).status_code == 200


async def test_a_scrape_sums_the_workers_series(served: tuple[str, str, Path]) -> None:
    base, metrics_url, metrics_dir = served
    assert not (metrics_dir / "counter_1.db").exists(), "the stale file was not cleared"
    sent = 0
    deadline = time.monotonic() + 60
    # Until both workers have answered some (the kernel decides who accepts).
    while len(_per_worker(metrics_dir)) < WORKERS:
        assert time.monotonic() < deadline, _per_worker(metrics_dir)
        await asyncio.gather(*(_get_healthz(base) for _ in range(20)))
        sent += 20
    async with httpx.AsyncClient(timeout=10) as http:
        # Counted just after the answer is sent: wait for the last few.
        while True:
            scrape = await http.get(metrics_url)
            assert scrape.status_code == 200
            total = _scraped(scrape.text, "conduit_http_requests_total", route=ROUTE, status="200")
            if total == sent or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        per_worker = _per_worker(metrics_dir)
        assert total == sent
        assert len(per_worker) == WORKERS
        assert all(count > 0 for count in per_worker.values()), per_worker
        assert sum(per_worker.values()) == total
        latencies = _scraped(
            scrape.text, "conduit_http_request_duration_seconds_count", route=ROUTE
        )
        assert latencies == sent
        assert _scraped(scrape.text, "conduit_http_requests_in_flight") == 0
        # The API port serves the API only.
        assert (await http.get(f"{base}/metrics")).status_code == 404


async def test_a_dead_workers_live_gauges_leave_the_sums(
    served: tuple[str, str, Path], tmp_path: Path
) -> None:
    base, metrics_url, metrics_dir = served
    await asyncio.gather(*(_get_healthz(base) for _ in range(20)))
    log = (tmp_path / "serve.log").read_text()
    line = next(line for line in log.splitlines() if "supervising 2 workers: " in line)
    pids = re.findall(r"\d+", line.split("workers: ", 1)[1])
    assert len(pids) == WORKERS
    deadline = time.monotonic() + 30
    # The in-flight gauge's file of each worker that served a request.
    while not any((metrics_dir / f"gauge_livesum_{pid}.db").exists() for pid in pids):
        assert time.monotonic() < deadline
        await asyncio.gather(*(_get_healthz(base) for _ in range(20)))
    killed = next(pid for pid in pids if (metrics_dir / f"gauge_livesum_{pid}.db").exists())
    os.kill(int(killed), signal.SIGKILL)
    while "replaced by worker" not in (tmp_path / "serve.log").read_text():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert not (metrics_dir / f"gauge_livesum_{killed}.db").exists()
    # Its counters stay in the sums: the scrape still works and counts what it answered.
    async with httpx.AsyncClient(timeout=10) as http:
        scrape = await http.get(metrics_url)
    assert scrape.status_code == 200
    assert _scraped(scrape.text, "conduit_http_requests_total", route=ROUTE) >= 20


def test_the_dashboard_and_the_docs_name_only_exported_series() -> None:
    exported = {
        sample_name
        for family in REGISTRY.collect()
        if family.name.startswith("conduit_")
        for sample_name in (
            family.name,
            f"{family.name}_total",
            f"{family.name}_bucket",
            f"{family.name}_count",
            f"{family.name}_sum",
        )
    }
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    queries = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    )
    named = set(re.findall(r"\bconduit_\w+", queries))
    assert named
    assert named <= exported, named - exported
    documented = set(re.findall(r"\bconduit_\w+", (ROOT / "docs" / "operations.md").read_text()))
    assert documented <= exported, documented - exported


async def test_one_process_serves_its_own_metrics(
    tmp_path: Path, settings: Settings, server_urls: tuple[str, str]
) -> None:
    with _serving(tmp_path, settings, server_urls[1], 0) as (base, metrics_url):
        await asyncio.gather(*(_get_healthz(base) for _ in range(5)))
        async with httpx.AsyncClient(timeout=10) as http:
            deadline = time.monotonic() + 10
            while True:
                scrape = await http.get(metrics_url)
                assert scrape.status_code == 200
                total = _scraped(scrape.text, "conduit_http_requests_total", route=ROUTE)
                if total == 5 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert total == 5
            assert (await http.get(f"{base}/metrics")).status_code == 404
