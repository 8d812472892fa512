"""The application factory."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

from flask import Flask, has_request_context, request
from flask.sessions import SessionInterface

from service.api import errors, hardening, health
from service.api.auth import AUTH, auth
from service.api.docs import bp as docs_bp
from service.api.health import bp as health_bp
from service.api.index import bp as index_bp
from service.api.jsonprovider import OrjsonProvider
from service.api.v1 import bp as v1_bp
from service.api.v1.converters import CONVERTERS
from service.caching.store import CACHE, cache
from service.http.adapter import ConcurrentWsgiToAsgi, run_on_serving_loop
from service.http.metrics import PoolSampler
from service.http.pipeline import build_pipeline
from service.http.types import Receive, Scope, Send
from service.infra import observability, tracing
from service.infra.db import DATABASE, db
from service.infra.extensions import SETTINGS
from service.infra.lifecycle import AppLifespan, register_lifespan
from service.infra.redis import REDIS, redis
from service.infra.settings import Settings

# Requests that never write: their statements run in autocommit (`Database.unit_of_work`).
READ_ONLY_METHODS = frozenset({"GET", "HEAD"})


class NoSessions(SessionInterface):
    """No cookie sessions: tokens authenticate. Flask's default would build a signing
    serializer for every request (SECRET_KEY is set) to read a cookie the API never sets."""

    def open_session(self, app: Flask, request: Any) -> Any:
        """The null session: it refuses writes."""
        return self.make_null_session(app)

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        """Nothing to save."""


class ConduitFlask(Flask):
    """Flask whose async views each run in one database unit of work."""

    json_provider_class = OrjsonProvider
    session_interface = NoSessions()

    def async_to_sync(self, func: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
        """Run `func` on the serving loop, committing its session once if it succeeds."""

        @functools.wraps(func)
        async def in_unit_of_work(*args: Any, **kwargs: Any) -> Any:
            reads_only = has_request_context() and request.method in READ_ONLY_METHODS
            async with db.unit_of_work(autocommit=reads_only):
                return await func(*args, **kwargs)

        return run_on_serving_loop(in_unit_of_work)


def create_app(settings: Settings) -> ConduitFlask:
    """Build the Flask app for `settings`; pools open at ASGI lifespan startup."""
    if not settings.is_production:
        settings = settings.with_dev_secret()
    database_url, redis_url, secret_key = settings.require()
    # First: the engines built from here on get their statement spans only when it is on.
    tracing_on = tracing.configure(settings)

    app = ConduitFlask("service")
    app.config.update(SECRET_KEY=secret_key, MAX_CONTENT_LENGTH=settings.max_body_bytes)
    SETTINGS.bind(app, settings)
    db.init_app(app, settings, database_url)
    redis.init_app(app, settings, redis_url)
    auth.init_app(app, settings, secret_key)
    cache.init_app(app, settings)
    observability.init_app(app, access_log=settings.access_log)
    if settings.metrics_port:
        # Before hardening's hooks: one of them answering early stops the hooks after it.
        app.before_request(health.note_route)
    if tracing_on:
        app.before_request(tracing.note_route)
        register_lifespan(app, tracing.TracingLifespan())
    errors.init_app(app)
    hardening.init_app(app, settings)
    # Before the blueprints: their rules look converters up when they are registered.
    app.url_map.converters.update(CONVERTERS)
    app.register_blueprint(health_bp)
    app.register_blueprint(v1_bp)
    app.register_blueprint(docs_bp)
    app.register_blueprint(index_bp)
    return app


class ConduitASGI(ConcurrentWsgiToAsgi):
    """The served app: the Flask app behind the concurrent adapter."""

    def __init__(self, flask_app: ConduitFlask, settings: Settings) -> None:
        super().__init__(
            flask_app,
            concurrency=settings.threads,
            max_body_bytes=settings.max_body_bytes,
            lifespan=AppLifespan(flask_app),
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
        )
        self.flask_app = flask_app
        # The layers on the event loop in front of the adapter (`service.http.pipeline`).
        self.pipeline = build_pipeline(
            super().http,
            settings=settings,
            tokens=AUTH.get(flask_app).tokens,
            redis=REDIS.get(flask_app),
            cache=CACHE.get(flask_app),
        )
        for resource in self.pipeline.resources:
            register_lifespan(flask_app, resource)
        if settings.metrics_port:
            register_lifespan(flask_app, self.metrics_sampler())

    def metrics_sampler(self) -> PoolSampler:
        """A sampler of this app's pools and counters (`service.http.metrics`)."""
        return PoolSampler(
            database=DATABASE.get(self.flask_app),
            redis=REDIS.get(self.flask_app),
            cache=CACHE.get(self.flask_app),
            waiting=self.waiting,
            hashing=AUTH.get(self.flask_app).passwords.usage,
        )

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request through the pipeline, the adapter last."""
        await self.pipeline.app(scope, receive, send)


def create_asgi(settings: Settings) -> ConduitASGI:
    """Build the served ASGI app for `settings`."""
    return ConduitASGI(create_app(settings), settings)
