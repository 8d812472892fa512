"""The served HTTP stack: every ASGI layer in front of the adapter, in one place.

Outer to inner:

0. tracing (`tracing`), only when tracing is on: a server span per request;
   metrics (`metrics`), only when METRICS_PORT is set: counts and times every answer;
1. security headers (`security`) for the responses Flask does not make;
2. rate limits (`ratelimit`): may answer 429 before the body is read or a thread taken;
3. the response cache (`response_cache`): may answer a repeated anonymous read;
4. conditional requests and compression (`conditional`);
5. the adapter (`adapter`): Flask in a worker thread.

Layers 0-4 run on the event loop. Each is handed what it needs here, explicitly; the limiter
and the response cache share one `RequestGenerations`, so the limiter's Redis call also
reads the cache generations the response cache needs (one round trip for both).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from service.caching.store import CacheState
from service.http.conditional import ConditionalMiddleware
from service.http.generations import RequestGenerations
from service.http.metrics import MetricsMiddleware
from service.http.ratelimit import RateLimitMiddleware
from service.http.response_cache import ResponseCache
from service.http.security import SecurityHeadersMiddleware
from service.http.tracing import TracingMiddleware
from service.http.types import ASGIApp
from service.infra import tracing
from service.infra.lifecycle import Resource
from service.infra.redis import RedisState
from service.infra.settings import Settings
from service.infra.web_security import SecurityPolicy
from service.services.security import Tokens

# Wraps the app inside it.
Layer = Callable[[ASGIApp], ASGIApp]


@dataclass
class Pipeline:
    """The outermost layer, and the parts of the stack others need to reach."""

    app: ASGIApp
    rate_limiter: RateLimitMiddleware | None = None
    response_cache: ResponseCache | None = None
    # Opened and closed with the app's own resources (the limiter's Redis client).
    resources: list[Resource] = field(default_factory=list)


def build_pipeline(
    adapter: ASGIApp,
    *,
    settings: Settings,
    tokens: Tokens,
    redis: RedisState,
    cache: CacheState,
) -> Pipeline:
    """Wrap `adapter` in the layers of the module docstring that `settings` turn on.

    `tokens` identify the rate limits' users; `redis` is the app's client (opened at lifespan
    startup), which the response cache uses; `cache` is the invalidation state the response
    cache shares with the read cache (`service.caching.store`).
    """
    limits_on = settings.rate_limit_enabled
    response_cache_on = cache.enabled and settings.response_cache_enabled
    generations = RequestGenerations() if limits_on and response_cache_on else None
    policy = SecurityPolicy.from_settings(settings)
    layers: list[Layer | None] = [
        # Off by default, and then not in the stack at all: no cost per request.
        TracingMiddleware if tracing.enabled() else None,
        MetricsMiddleware if settings.metrics_port else None,
        functools.partial(SecurityHeadersMiddleware, policy=policy),
        functools.partial(
            RateLimitMiddleware,
            settings=settings,
            redis_url=redis.url,
            tokens=tokens,
            generations=generations,
        )
        if limits_on
        else None,
        functools.partial(
            ResponseCache,
            state=cache,
            policy=policy,
            redis_state=redis,
            access_log=settings.access_log,
            generations=generations,
        )
        if response_cache_on
        else None,
        ConditionalMiddleware,
    ]
    pipeline = Pipeline(app=adapter)
    for layer in reversed(layers):
        if layer is None:
            continue
        pipeline.app = layer(pipeline.app)
        if isinstance(pipeline.app, RateLimitMiddleware):
            pipeline.rate_limiter = pipeline.app
            pipeline.resources.append(pipeline.app)
        elif isinstance(pipeline.app, ResponseCache):
            pipeline.response_cache = pipeline.app
            cache.response_stats = pipeline.app.stats
    return pipeline
