"""OpenTelemetry tracing, off unless an OTLP endpoint is configured (docs/operations.md, "Traces").

On (`configure`), the process has one `TracerProvider` of its own (never installed as the
global one: nothing else in the process records spans), exporting in batches over OTLP/HTTP,
and:

- every HTTP request gets a server span (`service.http.tracing`), a child of the caller's
  `traceparent` when it sends one; Flask names it after the route template (`note_route`);
- SQL statements and Redis commands made under a recording span get child spans (engine
  events of the engines `service.infra.db.build_engine` makes; a wrapper of redis-py's
  `execute_command` and pipeline `execute`). Those made under no span (the job worker's
  claims, samplers) are not traced: background polling would bury the traces that matter;
- a job carries the request id and trace context of the request that queued it
  (`job_context`, stored in `jobs.trace_context`); the worker runs it under a span parented
  to it (`job_span`), and an outgoing webhook delivery is a client span whose `traceparent`
  the receiver gets (`outgoing`).

Off, nothing is installed: no provider, no hooks, no middleware; the per-request cost is the
boolean checks at build time. The request id still travels with jobs and webhook deliveries,
for the logs.

Span attributes follow the OpenTelemetry semantic conventions where they exist; they never
hold SQL parameters, Redis arguments, query strings, webhook URLs (the receiver's token may be
in them) or exception messages (database errors quote row values): errors are recorded by
their type only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import request
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import Engine, event

from service.infra.observability import request_id_var
from service.infra.settings import Settings, mask_url

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

logger = logging.getLogger("conduit.tracing")

PROPAGATOR = TraceContextTextMapPropagator()
# Statements longer than this are cut in `db.query.text` (a span is not a query log).
MAX_STATEMENT_CHARS = 2000
REQUEST_ID_ATTRIBUTE = "conduit.request_id"
_ROUTE_PARAMETER = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


@dataclass
class _State:
    provider: TracerProvider | None = None
    tracer: Tracer | None = None
    redis_wrapped: bool = False


_state = _State()


def enabled() -> bool:
    """Whether spans are being recorded in this process."""
    return _state.tracer is not None


def traces_endpoint(settings: Settings) -> str | None:
    """Where spans are sent: the traces endpoint as given, else `/v1/traces` of the base one
    (as the OTLP/HTTP exporter specification says)."""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    base = settings.otel_exporter_otlp_endpoint
    return None if base is None else base.rstrip("/") + "/v1/traces"


def _sampler(settings: Settings) -> Sampler:
    from opentelemetry.sdk.trace import sampling

    name = settings.otel_traces_sampler
    ratio = 1.0 if settings.otel_traces_sampler_arg is None else settings.otel_traces_sampler_arg
    roots: dict[str, sampling.Sampler] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(ratio),
    }
    root = roots[name.removeprefix("parentbased_")]
    return sampling.ParentBased(root) if name.startswith("parentbased_") else root


def configure(settings: Settings, *, exporter: SpanExporter | None = None) -> bool:
    """Start recording spans if `settings` turn tracing on; True when it is on (also when an
    earlier call turned it on: one provider per process).

    `exporter` replaces the OTLP exporter (tests give an in-memory one).
    """
    if _state.provider is not None:
        return True
    if not settings.tracing_enabled:
        return False
    # The SDK's tracing and the exporter are imported only here: off, they are never loaded.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=traces_endpoint(settings))
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name}),
        sampler=_sampler(settings),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _state.provider = provider
    _state.tracer = provider.get_tracer("conduit")
    _wrap_redis()
    logger.info(
        "tracing on: spans of %s go to %s (sampler %s)",
        settings.otel_service_name,
        mask_url(traces_endpoint(settings) or ""),
        settings.otel_traces_sampler,
    )
    return True


def flush(timeout_millis: int = 30_000) -> bool:
    """Export the spans ended so far; True when they all went out in time."""
    provider = _state.provider
    return provider is None or provider.force_flush(timeout_millis)


def shutdown() -> None:
    """Export what is left and stop recording (idempotent)."""
    provider = _state.provider
    _state.provider = None
    _state.tracer = None
    if provider is not None:
        provider.shutdown()


class TracingLifespan:
    """Flushes the spans at lifespan shutdown (a lifespan resource of the app)."""

    async def startup(self) -> None:
        """Nothing to open: `configure` started the exporter."""

    async def shutdown(self) -> None:
        """Export what is left (off the loop: it waits on the collector) and stop."""
        await asyncio.to_thread(shutdown)


# -- requests ----------------------------------------------------------------------------


def _carrier(headers: Any) -> dict[str, str]:
    """The W3C trace context headers among an ASGI scope's."""
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name in (b"traceparent", b"tracestate"):
            carrier[name.decode()] = value.decode("latin-1")
    return carrier


def start_server_span(scope: Mapping[str, Any], method: str) -> tuple[Span, Token[Context]]:
    """Start the span of an HTTP request (a child of its `traceparent`, if any) and make it
    current; `end_server_span` ends it. Tracing must be on."""
    tracer = _state.tracer
    assert tracer is not None
    carrier = _carrier(scope.get("headers", ()))
    parent = PROPAGATOR.extract(carrier) if carrier else None
    span = tracer.start_span(
        method,
        context=parent,
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": method,
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        },
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    return span, token


def note_response(span: Span, message: Mapping[str, Any]) -> None:
    """Record an `http.response.start` message's status and request id on `span`."""
    status = message["status"]
    span.set_attribute("http.response.status_code", status)
    for name, value in message.get("headers", ()):
        if name == b"x-request-id":
            span.set_attribute(REQUEST_ID_ATTRIBUTE, value.decode("latin-1"))
            break
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
        span.set_attribute("error.type", str(status))


def end_server_span(span: Span, token: Token[Context], error: BaseException | None) -> None:
    """End the span `start_server_span` started and restore the previous context."""
    if error is not None:
        _record_error(span, error)
    span.end()
    otel_context.detach(token)


@functools.lru_cache(maxsize=512)
def route_template(rule: str) -> str:
    """A Flask rule as an OpenAPI-style template: `/articles/<slug:slug>` -> `/articles/{slug}`."""
    return _ROUTE_PARAMETER.sub(r"{\1}", rule)


def note_route() -> None:
    """Name the current request's span after its route template (a `before_request` hook)."""
    rule = request.url_rule
    span = trace.get_current_span()
    if rule is not None and span.is_recording():
        template = route_template(rule.rule)
        span.update_name(f"{request.method} {template}")
        span.set_attribute("http.route", template)


def _record_error(span: Span, error: BaseException) -> None:
    # The type only: messages of database errors quote row values.
    name = type(error).__name__
    span.set_status(Status(StatusCode.ERROR, name))
    span.set_attribute("error.type", name)


def mark_failed(error: BaseException) -> None:
    """Mark the current span failed with `error` (by its type)."""
    span = trace.get_current_span()
    if span.is_recording():
        _record_error(span, error)


# -- SQL -----------------------------------------------------------------------------------

_SPAN_KEY = "_conduit_span"


def _before_cursor_execute(
    _conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
) -> None:
    tracer = _state.tracer
    if tracer is None or context is None or not trace.get_current_span().is_recording():
        return
    words = statement.split(None, 1)
    operation = words[0].upper() if words else "SQL"
    span = tracer.start_span(
        operation,
        kind=SpanKind.CLIENT,
        attributes={
            "db.system.name": "postgresql",
            "db.operation.name": operation,
            "db.query.text": statement[:MAX_STATEMENT_CHARS],
        },
    )
    setattr(context, _SPAN_KEY, span)


def _after_cursor_execute(
    _conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool
) -> None:
    span = getattr(context, _SPAN_KEY, None)
    if span is not None:
        setattr(context, _SPAN_KEY, None)
        span.end()


def _handle_error(exception_context: Any) -> None:
    context = exception_context.execution_context
    span = getattr(context, _SPAN_KEY, None)
    if span is not None:
        setattr(context, _SPAN_KEY, None)
        _record_error(span, exception_context.original_exception)
        span.end()


def instrument_engine(engine: Engine) -> None:
    """Give each statement of `engine` a span (under a recording span); call it only when
    tracing is on, so that an engine built with it off carries no listener at all."""
    event.listen(engine, "before_cursor_execute", _before_cursor_execute)
    event.listen(engine, "after_cursor_execute", _after_cursor_execute)
    event.listen(engine, "handle_error", _handle_error)


# -- Redis ---------------------------------------------------------------------------------


def _command_name(args: tuple[Any, ...]) -> str:
    if not args:
        return "redis"
    name = args[0]
    return (name.decode("latin-1") if isinstance(name, bytes) else str(name)).upper()


def _wrap_redis() -> None:
    """Wrap redis-py's asyncio command and pipeline calls in spans (once per process: every
    client, the app's and the rate limiter's, goes through them). With tracing shut down
    again, or under no recording span, a call costs one check more."""
    if _state.redis_wrapped:
        return
    from redis.asyncio.client import Pipeline, Redis

    # redis-py leaves `execute_command` untyped.
    execute_command: Callable[..., Awaitable[Any]] = Redis.execute_command
    execute_pipeline = Pipeline.execute

    async def traced_command(self: Redis, *args: Any, **options: Any) -> Any:
        tracer = _state.tracer
        if tracer is None or not trace.get_current_span().is_recording():
            return await execute_command(self, *args, **options)
        name = _command_name(args)
        with _client_span(tracer, name, {"db.operation.name": name}):
            return await execute_command(self, *args, **options)

    async def traced_pipeline(self: Pipeline, raise_on_error: bool = True) -> Any:
        tracer = _state.tracer
        if tracer is None or not trace.get_current_span().is_recording():
            return await execute_pipeline(self, raise_on_error)
        names = [_command_name(args) for args, _options in self.command_stack]
        attributes: dict[str, Any] = {
            "db.operation.name": "PIPELINE",
            "db.operation.batch.size": len(names),
            "conduit.redis.commands": names,
        }
        with _client_span(tracer, "PIPELINE", attributes):
            return await execute_pipeline(self, raise_on_error)

    setattr(Redis, "execute_command", traced_command)  # noqa: B010 (mypy: no method assignment)
    setattr(Pipeline, "execute", traced_pipeline)  # noqa: B010
    _state.redis_wrapped = True


@contextmanager
def _client_span(tracer: Tracer, name: str, attributes: dict[str, Any]) -> Iterator[Span]:
    with tracer.start_as_current_span(
        name,
        kind=SpanKind.CLIENT,
        attributes={"db.system.name": "redis", **attributes},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            _record_error(span, exc)
            raise


# -- jobs and webhook deliveries -------------------------------------------------------------


def job_context() -> dict[str, str] | None:
    """What a job queued now carries of the current request (stored in `jobs.trace_context`):
    its id and, when tracing, its W3C `traceparent` (and `tracestate`)."""
    carried: dict[str, str] = {}
    request_id = request_id_var.get()
    if request_id is not None:
        carried["request_id"] = request_id
    if _state.tracer is not None:
        PROPAGATOR.inject(carried)  # nothing when no span is current
    return carried or None


@contextmanager
def job_span(
    kind: str, job_id: int, attempt: int, carried: Mapping[str, str] | None
) -> Iterator[None]:
    """Run a job with the request id it carries and, when tracing, under a span of the trace
    that queued it."""
    token = request_id_var.set(carried.get("request_id")) if carried else None
    try:
        tracer = _state.tracer
        if tracer is None:
            yield
            return
        parent = PROPAGATOR.extract(carried) if carried else None
        with tracer.start_as_current_span(
            f"job {kind}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "conduit.job.kind": kind,
                "conduit.job.id": job_id,
                "conduit.job.attempt": attempt,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            if carried and "request_id" in carried:
                span.set_attribute(REQUEST_ID_ATTRIBUTE, carried["request_id"])
            try:
                yield
            except BaseException as exc:
                _record_error(span, exc)
                raise
    finally:
        if token is not None:
            request_id_var.reset(token)


@dataclass
class Outgoing:
    """An outgoing HTTP request's extra headers (request id, `traceparent`) and its span."""

    headers: dict[str, str] = field(default_factory=dict)
    span: Span | None = None

    def answered(self, status: int | None, error: str | None) -> None:
        """Record the answer's status, or the error kind when there was none."""
        span = self.span
        if span is None:
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None or status is None or status >= 400:
            failure = error or str(status)
            span.set_status(Status(StatusCode.ERROR, failure))
            span.set_attribute("error.type", failure)


@contextmanager
def outgoing(name: str, attributes: Mapping[str, Any]) -> Iterator[Outgoing]:
    """An outgoing HTTP request: a client span when tracing (whose `traceparent` goes in the
    headers) and the current request id as `X-Request-ID`."""
    request = Outgoing()
    request_id = request_id_var.get()
    if request_id is not None:
        request.headers["X-Request-ID"] = request_id
    tracer = _state.tracer
    if tracer is None:
        yield request
        return
    with tracer.start_as_current_span(
        name,
        kind=SpanKind.CLIENT,
        attributes=dict(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        request.span = span
        PROPAGATOR.inject(request.headers)
        try:
            yield request
        except BaseException as exc:
            _record_error(span, exc)
            raise
