"""The metrics middleware and sampler (service/http/metrics.py) in the real app, in this
process: off by default (not in the pipeline, no /metrics on the API port); on, requests
are counted by route template and status, and the pools are sampled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest_asyncio
from prometheus_client import REGISTRY
from sqlalchemy import text

from service.app import ConduitASGI, create_asgi
from service.caching.store import CACHE
from service.http.metrics import MetricsMiddleware, route_label
from service.infra.db import DATABASE
from service.infra.settings import Settings
from service.jobs.queue import enqueue
from tests.apps import running

API = "/api/v1"


def requests_counted(method: str, route: str, status: int) -> float:
    labels = {"method": method, "route": route, "status": str(status)}
    return REGISTRY.get_sample_value("conduit_http_requests_total", labels) or 0.0


def latencies_counted(method: str, route: str) -> float:
    labels = {"method": method, "route": route}
    return REGISTRY.get_sample_value("conduit_http_request_duration_seconds_count", labels) or 0.0


@pytest_asyncio.fixture
async def metered(settings: Settings) -> AsyncIterator[ConduitASGI]:
    """The app with METRICS_PORT set (the listener itself is started by `conduit serve`)."""
    overrides = {"metrics_port": 9464, "threads": 4, "db_pool_size": 4}
    async with running(create_asgi(settings.model_copy(update=overrides))) as asgi:
        yield asgi


async def test_metrics_are_off_by_default_no_layer_and_no_api_route(
    app: ConduitASGI, client: httpx.AsyncClient
) -> None:
    layer = app.pipeline.app
    while layer is not None:
        assert not isinstance(layer, MetricsMiddleware)
        layer = getattr(layer, "app", None)
    response = await client.get("/metrics")
    assert response.status_code == 404
    assert set(response.json()) == {"errors"}  # the API's own 404, not a metrics page


async def test_on_the_middleware_is_the_outermost_layer(metered: ConduitASGI) -> None:
    assert isinstance(metered.pipeline.app, MetricsMiddleware)


async def test_requests_are_counted_by_route_template_and_status(metered: ConduitASGI) -> None:
    article = f"{API}/articles/<slug:slug>"
    before = {
        "article": requests_counted("GET", article, 404),
        "unmatched": requests_counted("GET", "unmatched", 404),
        "tags": requests_counted("GET", f"{API}/tags", 200),
        "latency": latencies_counted("GET", f"{API}/tags"),
        "other": requests_counted("OTHER", "unmatched", 404),
    }
    transport = httpx.ASGITransport(app=metered)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        for slug in ("one", "two", "three"):
            assert (await http.get(f"{API}/articles/{slug}")).status_code == 404
        assert (await http.get("/no/such/path")).status_code == 404
        assert (await http.get(f"{API}/tags")).status_code == 200
        # A made-up method is not a label value of its own.
        assert (await http.request("BREW", "/no/such/path")).status_code in {404, 405}
    # Three different slugs, one series: the template, not the path.
    assert requests_counted("GET", article, 404) - before["article"] == 3
    assert requests_counted("GET", "unmatched", 404) - before["unmatched"] == 1
    assert requests_counted("GET", f"{API}/tags", 200) - before["tags"] == 1
    assert latencies_counted("GET", f"{API}/tags") - before["latency"] == 1
    brewed = sum(
        requests_counted("OTHER", route, status)
        for route in ("unmatched", "none")
        for status in (404, 405)
    )
    assert brewed - before["other"] >= 1
    assert REGISTRY.get_sample_value("conduit_http_requests_in_flight") == 0


def test_an_answer_flask_did_not_route_is_unmatched_when_404_else_none() -> None:
    assert route_label(404) == "unmatched"
    assert route_label(429) == "none"
    assert route_label(413) == "none"


async def test_the_sampler_copies_pool_usage_and_counter_growth(metered: ConduitASGI) -> None:
    flask_app = metered.flask_app
    sampler = metered.metrics_sampler()
    stats = CACHE.get(flask_app).stats
    before = REGISTRY.get_sample_value("conduit_cache_operations_total", {"outcome": "hits"})
    stats.hits += 5
    sampler.sample()
    sampler.sample()  # the growth is counted once
    after = REGISTRY.get_sample_value("conduit_cache_operations_total", {"outcome": "hits"})
    assert after is not None
    assert after - (before or 0.0) == 5
    engine = DATABASE.get(flask_app).engine
    assert engine is not None
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
        sampler.sample()
        held = REGISTRY.get_sample_value("conduit_db_pool_connections", {"state": "checked_out"})
    assert held == 1
    sampler.sample()
    assert REGISTRY.get_sample_value("conduit_db_pool_connections", {"state": "checked_out"}) == 0
    idle = REGISTRY.get_sample_value("conduit_db_pool_connections", {"state": "idle"})
    assert idle is not None
    assert idle >= 1  # the connection just returned
    # The fixture's DB_POOL_SIZE=4 and the default overflow of 4.
    assert REGISTRY.get_sample_value("conduit_db_pool_limit_connections") == 8
    assert REGISTRY.get_sample_value("conduit_adapter_waiting_requests") == 0


async def test_the_sampler_reads_the_job_backlog_by_kind(metered: ConduitASGI) -> None:
    flask_app = metered.flask_app
    sampler = metered.metrics_sampler()
    state = DATABASE.get(flask_app)
    assert state.sessionmaker is not None
    async with state.sessionmaker() as session:
        for _ in range(3):
            await enqueue(session=session, kind="metrics.test", payload={})
        # Not due yet: not in the backlog.
        later = datetime.now(UTC) + timedelta(hours=1)
        await enqueue(session=session, kind="metrics.later", payload={}, run_at=later)
        await session.commit()
    await sampler.sample_jobs()
    assert REGISTRY.get_sample_value("conduit_jobs_pending", {"kind": "metrics.test"}) == 3
    age = REGISTRY.get_sample_value(
        "conduit_jobs_oldest_pending_age_seconds", {"kind": "metrics.test"}
    )
    assert age is not None
    assert 0 <= age < 60
    assert REGISTRY.get_sample_value("conduit_jobs_pending", {"kind": "metrics.later"}) is None
    async with state.sessionmaker() as session:
        await session.execute(text("UPDATE jobs SET status = 'done' WHERE kind = 'metrics.test'"))
        await session.commit()
    await sampler.sample_jobs()
    # An emptied backlog reads 0, not its last value.
    assert REGISTRY.get_sample_value("conduit_jobs_pending", {"kind": "metrics.test"}) == 0


async def test_a_refusal_is_counted_by_the_limit_that_refused_it(settings: Settings) -> None:
    overrides = {
        "metrics_port": 9464,
        "rate_limit_enabled": True,
        "rate_limit_auth_per_minute": 1,
        "threads": 4,
        "db_pool_size": 4,
    }
    before = REGISTRY.get_sample_value("conduit_rate_limit_refusals_total", {"policy": "auth"})
    login = {"user": {"email": "nobody@example.com", "password": "wrong password"}}
    async with running(create_asgi(settings.model_copy(update=overrides))) as asgi:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            statuses = [
                (await http.post(f"{API}/users/login", json=login)).status_code for _ in range(2)
            ]
    assert statuses[1] == 429
    after = REGISTRY.get_sample_value("conduit_rate_limit_refusals_total", {"policy": "auth"})
    assert after is not None
    assert after - (before or 0.0) == 1
    assert requests_counted("POST", "none", 429) >= 1  # refused before Flask: no route
