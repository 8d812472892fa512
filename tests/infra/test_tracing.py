"""OpenTelemetry tracing (service/infra/tracing.py, service/http/tracing.py) in the real app,
real PostgreSQL and Redis, spans caught by the SDK's in-memory exporter: off by default (no
provider, no layer, no hooks); on, a server span per request named by its route template
with SQL and Redis child spans, the caller's `traceparent` honoured, cached answers traced
too, and a webhook event carried through its job to the receiver in one trace."""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError
from sqlalchemy import event, select

from service.app import ConduitASGI, create_asgi
from service.http.tracing import TracingMiddleware
from service.infra import tracing
from service.infra.db import DATABASE
from service.infra.settings import Settings
from service.models import Job
from tests.apps import running
from tests.factories import TestUser, make_article
from tests.webhooks.receivers import Receiver, running_receiver
from tests.webhooks.support import deliver

API = "/api/v1"
ENDPOINT = "http://127.0.0.1:4318"  # never reached: the tests export to memory
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
MakeUser = Callable[..., Awaitable[TestUser]]


@pytest.fixture
def traced_settings(settings: Settings) -> Settings:
    """The test settings with an OTLP endpoint (tracing on) and loopback webhooks allowed."""
    return settings.model_copy(
        update={
            "otel_exporter_otlp_endpoint": ENDPOINT,
            "webhook_allowlist": "127.0.0.0/8,::1",
            "threads": 4,
            "db_pool_size": 4,
        }
    )


@pytest.fixture
def exporter(traced_settings: Settings) -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, into memory, for this test only."""
    memory = InMemorySpanExporter()
    assert tracing.configure(traced_settings, exporter=memory)
    try:
        yield memory
    finally:
        tracing.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A plain-HTTP webhook receiver on 127.0.0.1 (as the webhook tests use)."""
    with running_receiver("127.0.0.1") as server:
        yield server


@asynccontextmanager
async def client_of(settings: Settings) -> AsyncIterator[tuple[ConduitASGI, httpx.AsyncClient]]:
    """A started app for `settings` and a client of it."""
    async with running(create_asgi(settings)) as asgi:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield asgi, http


@pytest_asyncio.fixture
async def traced_app(
    traced_settings: Settings, exporter: InMemorySpanExporter
) -> AsyncIterator[tuple[ConduitASGI, httpx.AsyncClient]]:
    """An app built while tracing is on, and a client of it."""
    async with client_of(traced_settings) as both:
        yield both


@pytest.fixture
def traced(traced_app: tuple[ConduitASGI, httpx.AsyncClient]) -> httpx.AsyncClient:
    """The client of `traced_app`."""
    return traced_app[1]


def forget(exporter: InMemorySpanExporter) -> None:
    """Drop the spans so far (those still in the batch processor too)."""
    assert tracing.flush()
    exporter.clear()


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert tracing.flush()
    return list(exporter.get_finished_spans())


def server_spans(spans: list[ReadableSpan], path: str) -> list[ReadableSpan]:
    return [
        span
        for span in spans
        if span.kind is SpanKind.SERVER and (span.attributes or {}).get("url.path") == path
    ]


def children(spans: list[ReadableSpan], parent: ReadableSpan, system: str) -> list[ReadableSpan]:
    """The spans of `system` (postgresql, redis) directly under `parent`."""
    return [
        span
        for span in spans
        if span.parent is not None
        and span.parent.span_id == parent.context.span_id
        and (span.attributes or {}).get("db.system.name") == system
    ]


def header(headers: dict[str, str], name: str) -> str | None:
    return next((value for key, value in headers.items() if key.lower() == name), None)


# -- off --------------------------------------------------------------------------------------


async def test_off_by_default_no_provider_no_layer_no_hooks(
    app: ConduitASGI, client: httpx.AsyncClient, settings: Settings
) -> None:
    assert not settings.tracing_enabled
    assert not tracing.configure(settings)
    assert not tracing.enabled()
    layer: Any = app.pipeline.app
    while layer is not None:
        assert not isinstance(layer, TracingMiddleware)
        layer = getattr(layer, "app", None)
    engine = DATABASE.get(app.flask_app).engine
    assert engine is not None
    assert not event.contains(
        engine.sync_engine, "before_cursor_execute", tracing._before_cursor_execute
    )
    response = await client.get(f"{API}/tags")
    assert response.status_code == 200
    assert tracing._state.provider is None
    # Outside a request nothing is carried (with it off, a request carries its id alone).
    assert contextvars.Context().run(tracing.job_context) is None


def test_sdk_disabled_wins_over_an_endpoint(settings: Settings) -> None:
    disabled = settings.model_copy(
        update={"otel_exporter_otlp_endpoint": ENDPOINT, "otel_sdk_disabled": True}
    )
    assert not disabled.tracing_enabled
    assert not tracing.configure(disabled, exporter=InMemorySpanExporter())
    assert tracing._state.provider is None


# -- settings -----------------------------------------------------------------------------------


def test_the_standard_variables_turn_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "conduit-eu")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "ParentBased_TraceIdRatio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    settings = Settings()
    assert settings.tracing_enabled
    assert settings.otel_service_name == "conduit-eu"
    assert tracing.traces_endpoint(settings) == "http://collector:4318/v1/traces"
    sampler = tracing._sampler(settings)
    assert "TraceIdRatioBased{0.25}" in sampler.get_description()
    assert sampler.get_description().startswith("ParentBased")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces.example/otlp")
    assert tracing.traces_endpoint(Settings()) == "https://traces.example/otlp"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not Settings().tracing_enabled


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("otel_exporter_otlp_endpoint", "collector:4318"),
        ("otel_exporter_otlp_endpoint", "http://collector:"),
        ("otel_exporter_otlp_endpoint", "http://collector:99999"),
        ("otel_exporter_otlp_traces_endpoint", "ftp://collector/v1/traces"),
        ("otel_exporter_otlp_protocol", "grpc"),
        ("otel_traces_sampler", "sometimes"),
        ("otel_traces_sampler_arg", "1.5"),
        ("otel_service_name", ""),
    ],
)
def test_bad_values_are_refused_at_start(variable: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**{variable: value})
    assert variable in str(caught.value)


# -- requests -----------------------------------------------------------------------------------


async def test_a_request_has_a_server_span_with_sql_and_redis_children(
    traced: httpx.AsyncClient, exporter: InMemorySpanExporter, make_user: MakeUser
) -> None:
    alice = await make_user(username="alice")
    slug = (await make_article(traced, alice, title="Traced"))["slug"]
    forget(exporter)
    response = await traced.get(f"{API}/articles/{slug}", headers=alice.headers)
    assert response.status_code == 200
    spans = finished(exporter)
    [server] = server_spans(spans, f"{API}/articles/{slug}")
    assert server.name == f"GET {API}/articles/{{slug}}"
    attributes = server.attributes or {}
    assert attributes["http.route"] == f"{API}/articles/{{slug}}"
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.response.status_code"] == 200
    assert attributes[tracing.REQUEST_ID_ATTRIBUTE] == response.headers["x-request-id"]
    assert server.parent is None
    sql = children(spans, server, "postgresql")
    assert sql, [span.name for span in spans]
    assert all(span.kind is SpanKind.CLIENT for span in sql)
    assert any("FROM articles" in str((s.attributes or {})["db.query.text"]) for s in sql)
    # Statements, never their parameters.
    assert not any(slug in str((s.attributes or {})["db.query.text"]) for s in sql)
    assert children(spans, server, "redis"), [span.name for span in spans]


async def test_an_incoming_traceparent_becomes_the_parent(
    traced: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    response = await traced.get(
        f"{API}/articles/no-such-article", headers={"traceparent": traceparent}
    )
    assert response.status_code == 404
    [server] = server_spans(finished(exporter), f"{API}/articles/no-such-article")
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert server.parent.is_remote
    assert (server.attributes or {})["http.response.status_code"] == 404
    assert (server.attributes or {})["http.route"] == f"{API}/articles/{{slug}}"


async def test_unrouted_answers_and_server_errors_are_spans_too(
    traced: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    assert (await traced.request("BREW", "/no/such/path")).status_code in {404, 405}
    [span] = server_spans(finished(exporter), "/no/such/path")
    assert span.name == "_OTHER"  # a client cannot mint span names
    assert "http.route" not in (span.attributes or {})
    assert span.status.status_code is StatusCode.UNSET  # a 4xx is the client's error


async def test_an_answer_from_the_response_cache_has_a_span(
    traced_app: tuple[ConduitASGI, httpx.AsyncClient], exporter: InMemorySpanExporter
) -> None:
    asgi, traced = traced_app
    cache = asgi.pipeline.response_cache
    assert cache is not None
    assert (await traced.get(f"{API}/tags")).status_code == 200  # stored
    forget(exporter)
    hits = cache.stats.hits
    response = await traced.get(f"{API}/tags")
    assert response.status_code == 200
    assert cache.stats.hits == hits + 1
    spans = finished(exporter)
    [server] = server_spans(spans, f"{API}/tags")
    assert (server.attributes or {})["http.response.status_code"] == 200
    assert (server.attributes or {})[tracing.REQUEST_ID_ATTRIBUTE] == response.headers[
        "x-request-id"
    ]
    # Answered before Flask: no route, no SQL, the cache's Redis read.
    assert "http.route" not in (server.attributes or {})
    assert children(spans, server, "postgresql") == []
    assert children(spans, server, "redis")


# -- jobs and webhooks --------------------------------------------------------------------------


async def test_a_webhook_event_is_traced_from_the_request_to_the_receiver(
    traced_app: tuple[ConduitASGI, httpx.AsyncClient],
    exporter: InMemorySpanExporter,
    traced_settings: Settings,
    make_user: MakeUser,
    receiver: Receiver,
) -> None:
    asgi, traced = traced_app
    alice, bob = await make_user(username="alice"), await make_user(username="bob")
    body = {"webhook": {"url": receiver.url("/ok"), "events": ["article.favorited"]}}
    created = await traced.post(f"{API}/webhooks", json=body, headers=alice.headers)
    assert created.status_code == 201, created.text
    slug = (await make_article(traced, alice, title="Favored"))["slug"]
    forget(exporter)

    headers = {**bob.headers, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    favorited = await traced.post(f"{API}/articles/{slug}/favorite", headers=headers)
    assert favorited.status_code == 200
    request_id = favorited.headers["x-request-id"]
    engine = DATABASE.get(asgi.flask_app).engine
    assert engine is not None
    async with engine.connect() as connection:
        [carried] = (
            await connection.scalars(
                select(Job.trace_context).where(
                    Job.kind == "webhook.deliver", Job.status == "pending"
                )
            )
        ).all()
    assert carried is not None
    assert carried["request_id"] == request_id
    assert carried["traceparent"].startswith(f"00-{TRACE_ID}-")

    assert await deliver(traced_settings) == 1
    [hit] = receiver.hits("/ok")
    spans = finished(exporter)
    in_trace = [span for span in spans if format(span.context.trace_id, "032x") == TRACE_ID]
    [server] = [span for span in in_trace if span.kind is SpanKind.SERVER]
    [job] = [span for span in in_trace if span.name == "job webhook.deliver"]
    [delivery] = [span for span in in_trace if span.name == "webhook POST"]
    assert job.kind is SpanKind.CONSUMER
    assert job.parent is not None
    # Parented to the span that was current when the job was queued, in the request.
    assert job.parent.span_id in {span.context.span_id for span in in_trace}
    assert (job.attributes or {})[tracing.REQUEST_ID_ATTRIBUTE] == request_id
    assert delivery.parent is not None
    assert delivery.parent.span_id == job.context.span_id
    assert delivery.kind is SpanKind.CLIENT
    assert (delivery.attributes or {})["http.response.status_code"] == 200
    assert (delivery.attributes or {})["server.address"] == "127.0.0.1"
    assert children(spans, job, "postgresql")  # the job's own statements
    assert server.parent is not None
    # The receiver continues the same trace, from the delivery span, and hears the request id.
    traceparent = header(hit.headers, "traceparent")
    assert traceparent == f"00-{TRACE_ID}-{format(delivery.context.span_id, '016x')}-01"
    assert header(hit.headers, "x-request-id") == request_id


async def test_without_tracing_jobs_and_deliveries_still_carry_the_request_id(
    settings: Settings, make_user: MakeUser, receiver: Receiver
) -> None:
    untraced = settings.model_copy(update={"webhook_allowlist": "127.0.0.0/8,::1"})
    async with client_of(untraced) as (_, api):
        alice, bob = await make_user(username="alice"), await make_user(username="bob")
        body = {"webhook": {"url": receiver.url("/ok"), "events": ["article.favorited"]}}
        assert (await api.post(f"{API}/webhooks", json=body, headers=alice.headers)).is_success
        slug = (await make_article(api, alice, title="Untraced"))["slug"]
        headers = {**bob.headers, "X-Request-ID": "favorite-42"}
        assert (await api.post(f"{API}/articles/{slug}/favorite", headers=headers)).is_success
    assert await deliver(untraced) == 1
    [hit] = receiver.hits("/ok")
    assert header(hit.headers, "x-request-id") == "favorite-42"
    assert header(hit.headers, "traceparent") is None
