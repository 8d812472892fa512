"""Rate limits: an ASGI middleware in front of the adapter, shared through Redis.

It runs on the event loop before the body is read or a thread is taken, so a refused request
costs at most one Redis round trip and never enters Flask.

The rules in detail: docs/http.md.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.caching.generations import START_GENERATION_LUA, generation_key
from service.domain.errors import DomainError
from service.http.generations import RequestGenerations
from service.http.types import ASGIApp, Message, Receive, Scope, Send
from service.infra import metrics
from service.infra.batching import TurnBatch
from service.infra.observability import request_id_from
from service.infra.redis import ClientOptions, RedisBreaker, close_client, open_client
from service.infra.settings import Settings
from service.infra.web_security import IPAddress, ProxyTrust
from service.services.security import Tokens

logger = logging.getLogger("conduit.ratelimit")
access_logger = logging.getLogger("conduit.access")

KEY_PREFIX = "rl:"
WINDOW_SECONDS = 60
DEFAULT_POLICY = "default"
AUTH_POLICY = "auth"
EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})
AUTH_PATHS = frozenset(
    {
        "/api/v1/users",
        "/api/v1/users/login",
        "/api/v1/oauth/token",
        "/api/v1/users/password-reset",
        "/api/v1/users/password-reset/confirm",
    }
)
TOKEN_SCHEMES = (b"token", b"bearer")
# How long a request waits for Redis's answer. It also absorbs the event loop's own lag under
# a burst (docs/performance.md: 100 ms was too short), which must not switch the limits off.
REDIS_TIMEOUT_SECONDS = 0.25
# A refused connection fails at once; this only bounds a host that does not answer at all.
CONNECT_TIMEOUT_SECONDS = 1.0
# One script call takes well under a millisecond: a few connections serve a whole process,
# and a small pool keeps a burst from opening dozens of connections at once.
MAX_CONNECTIONS = 16
POOL_TIMEOUT_SECONDS = 1.0
# Short, like the cache's: while Redis is skipped the general limits are off.
RETRY_REDIS_AFTER_SECONDS = 1.0
WARN_EVERY_SECONDS = 10.0
MEMORY_MAX_KEYS = 100_000

# Many requests in one call (the requests of one turn of the event loop, `TurnBatch`), each
# decided in order, so two requests on one bucket see each other's charge.
# KEYS: the requests' buckets, request after request. ARGV[1]: the number of requests; then
# per request: its number of buckets n, then limit and window (ms) per bucket.
# Returns, per request: allowed (1/0), then per bucket: remaining, ms until full, ms until one
# more. After the requests, ARGV may give a number g of generation counters: the last g KEYS,
# whose values (`service.caching.generations`) are returned after the decisions.
GCRA_SCRIPT = (
    START_GENERATION_LUA
    + """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local out = {}
local k = 0
local a = 2
for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  a = a + 1
  local allowed = 1
  local tats = {}
  for i = 1, n do
    local limit = tonumber(ARGV[a + 2 * i - 2])
    local window = tonumber(ARGV[a + 2 * i - 1])
    local tat = tonumber(redis.call('GET', KEYS[k + i])) or now
    if tat < now then tat = now end
    tats[i] = tat
    if now < tat + window / limit - window then allowed = 0 end
  end
  out[#out + 1] = allowed
  for i = 1, n do
    local limit = tonumber(ARGV[a + 2 * i - 2])
    local window = tonumber(ARGV[a + 2 * i - 1])
    local interval = window / limit
    local tat = tats[i]
    local retry = math.max(0, tat + interval - window - now)
    if allowed == 1 then
      tat = tat + interval
      -- At a limit finer than the clock's precision the bucket may not move at all.
      local ttl = math.max(1, math.ceil(tat - now))
      redis.call('SET', KEYS[k + i], string.format('%.3f', tat), 'PX', ttl)
    end
    out[#out + 1] = math.max(0, math.floor((now + window - tat) / interval))
    out[#out + 1] = math.ceil(tat - now)
    out[#out + 1] = math.ceil(retry)
  end
  k = k + n
  a = a + 2 * n
end
local g = tonumber(ARGV[a]) or 0
for i = #KEYS - g + 1, #KEYS do out[#out + 1] = generation(KEYS[i]) end
return out
"""
)


@dataclass(frozen=True)
class Policy:
    """`limit` requests per `window` seconds, named in the RateLimit headers."""

    name: str
    limit: int
    window: int = WINDOW_SECONDS


@dataclass(frozen=True)
class Decision:
    """One policy's verdict on one request."""

    policy: Policy
    remaining: int
    reset_ms: int
    retry_ms: int


@dataclass(frozen=True)
class Verdict:
    """Whether a request may pass, and what each policy it went through says."""

    allowed: bool
    decisions: tuple[Decision, ...]
    # The cache generations by kind, read by the same script (`RequestGenerations`).
    generations: dict[str, str] | None = None

    @property
    def retry_after(self) -> int:
        """Whole seconds until every policy admits the request again (at least 1)."""
        waits = [decision.retry_ms for decision in self.decisions]
        return max(1, math.ceil(max(waits, default=0) / 1000))

    def headers(self) -> list[tuple[bytes, bytes]]:
        """`RateLimit-Policy` and `RateLimit` for these decisions."""
        if not self.decisions:
            return []
        policies = policy_header(tuple(d.policy for d in self.decisions))
        limits = ", ".join(
            f'"{d.policy.name}";r={d.remaining};t={math.ceil(d.reset_ms / 1000)}'
            for d in self.decisions
        )
        return [(b"ratelimit-policy", policies), (b"ratelimit", limits.encode())]


@functools.lru_cache(maxsize=64)
def policy_header(policies: tuple[Policy, ...]) -> bytes:
    """The `RateLimit-Policy` value of these policies (the same few on every request)."""
    return ", ".join(f'"{p.name}";q={p.limit};w={p.window}' for p in policies).encode()


def gcra(
    tat: float | None, now: float, policy: Policy, *, charge: bool
) -> tuple[bool, float, Decision]:
    """The Lua script's arithmetic for one bucket: (allowed, new tat, decision); times in ms."""
    window = policy.window * 1000
    interval = window / policy.limit
    current = max(tat if tat is not None else now, now)
    retry = max(0.0, current + interval - window - now)
    allowed = retry == 0
    if allowed and charge:
        current += interval
    remaining = max(0, math.floor((now + window - current) / interval))
    decision = Decision(policy, remaining, math.ceil(current - now), math.ceil(retry))
    return allowed, current, decision


class MemoryLimiter:
    """The same GCRA in this process's memory: the auth policy's fallback while Redis is down."""

    def __init__(self, max_keys: int = MEMORY_MAX_KEYS) -> None:
        self.max_keys = max_keys
        self._tats: dict[str, float] = {}

    def hit(self, checks: Sequence[tuple[Policy, str]], now_ms: float | None = None) -> Verdict:
        """Check and (if every policy allows) charge the buckets of `checks`."""
        now = time.monotonic() * 1000 if now_ms is None else now_ms
        results = [gcra(self._tats.get(key), now, policy, charge=False) for policy, key in checks]
        allowed = all(ok for ok, _, _ in results)
        if not allowed:
            return Verdict(False, tuple(decision for _, _, decision in results))
        decisions = []
        for policy, key in checks:
            _, tat, decision = gcra(self._tats.get(key), now, policy, charge=True)
            self._tats.pop(key, None)  # re-insert: the dict stays ordered by last use
            self._tats[key] = tat
            decisions.append(decision)
        if len(self._tats) > self.max_keys:
            self._evict(now)
        return Verdict(True, tuple(decisions))

    def _evict(self, now: float) -> None:
        # Full buckets carry no state; if still too many (a flood of addresses), forget the
        # least recently used ones rather than grow without bound.
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
        excess = len(self._tats) - self.max_keys // 2
        if excess > 0:
            for key in list(self._tats)[:excess]:
                del self._tats[key]


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _headers(scope: Scope, name: bytes) -> list[str]:
    return [
        bytes(value).decode("latin-1")
        for key, value in scope.get("headers", ())
        if key.lower() == name
    ]


@functools.lru_cache(maxsize=4096)
def address_key(address: IPAddress | None) -> str:
    """The bucket of a client address: the address, or its /64 for IPv6."""
    if address is None:
        return "ip:unknown"
    if address.version == 6:
        return f"ip:{address.exploded[:19]}::/64"
    return f"ip:{address}"


def _adding_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """`send`, adding `extra` to the response's headers."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return send_with_headers


class RateLimitMiddleware:
    """ASGI middleware applying the policies above (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        redis_url: str,
        tokens: Tokens,
        generations: RequestGenerations | None = None,
        redis_timeout: float = REDIS_TIMEOUT_SECONDS,
    ) -> None:
        self.app = app
        self.settings = settings
        self.redis_url = redis_url
        self.tokens = tokens
        self.redis_timeout = redis_timeout
        self.proxies = ProxyTrust(settings.trusted_proxies)
        self.anonymous = Policy(DEFAULT_POLICY, settings.rate_limit_anonymous_per_minute)
        self.authenticated = Policy(DEFAULT_POLICY, settings.rate_limit_authenticated_per_minute)
        self.auth = Policy(AUTH_POLICY, settings.rate_limit_auth_per_minute)
        self.fallback = MemoryLimiter()
        self.client: Redis | None = None
        self._script: Any = None
        self._batch: TurnBatch[list[tuple[Policy, str]], Verdict] = TurnBatch(self._check_batch)
        self.breaker = RedisBreaker(RETRY_REDIS_AFTER_SECONDS)
        # Read with every batch, after its charges, for the response cache behind.
        self.generations = generations
        self._generation_kinds = generations.kinds if generations is not None else ()
        self._last_warning = -math.inf

    def client_options(self) -> ClientOptions:
        """The limiter's own client: a few connections, short timeouts, a single attempt (a
        request never waits for Redis longer than `redis_timeout`)."""
        return ClientOptions(
            max_connections=min(MAX_CONNECTIONS, self.settings.redis_max_connections),
            pool_timeout=POOL_TIMEOUT_SECONDS,
            socket_timeout=self.redis_timeout,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            health_check_interval=0,
            retries=0,
        )

    async def startup(self) -> None:
        """Create the client on the serving loop and warm it up; an unreachable Redis is not
        an error here (the app's own startup check decides)."""
        self.client = open_client(self.redis_url, self.client_options())
        self._script = self.client.register_script(GCRA_SCRIPT)
        # Load the script and open a first connection now rather than in the first burst.
        with suppress(RedisError, OSError, TimeoutError):
            await self._script(keys=[], args=[0], client=self.client)

    async def shutdown(self) -> None:
        """Close the client."""
        client, self.client = self.client, None
        if client is not None:
            await close_client(client)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse the request with a 429 or pass it on, adding the RateLimit headers."""
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        verdict = await self.check(self.checks(scope))
        if not verdict.allowed:
            await self._refuse(scope, send, verdict)
            return
        extra = verdict.headers()
        if extra:
            send = _adding_headers(send, extra)
        if self.generations is None:
            await self.app(scope, receive, send)
            return
        token = self.generations.provide(verdict.generations)
        try:
            await self.app(scope, receive, send)
        finally:
            self.generations.withdraw(token)

    def client_address(self, scope: Scope) -> IPAddress | None:
        """The client's IP (see the module docstring on proxies)."""
        client = scope.get("client")
        peer = client[0] if client else None
        return self.proxies.client_ip(peer, _headers(scope, b"x-forwarded-for"))

    def principal(self, scope: Scope) -> str | None:
        """`u:<user id>` (or `c:<client id>`) for a valid bearer token, else None."""
        header = _header(scope, b"authorization")
        if header is None:
            return None
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() not in TOKEN_SCHEMES or not token.strip():
            return None
        try:
            claims = self.tokens.verify(token.strip().decode("latin-1"))
        except DomainError:
            return None
        client_id = getattr(claims, "client_id", None)
        return f"c:{client_id}" if client_id else f"u:{claims.user_id}"

    def checks(self, scope: Scope) -> list[tuple[Policy, str]]:
        """The (policy, bucket key) pairs that apply to the request."""
        address: str | None = None
        principal = self.principal(scope)
        if principal is None:
            address = address_key(self.client_address(scope))
            checks = [(self.anonymous, f"{KEY_PREFIX}{DEFAULT_POLICY}:{address}")]
        else:
            checks = [(self.authenticated, f"{KEY_PREFIX}{DEFAULT_POLICY}:{principal}")]
        if scope.get("method") == "POST" and scope["path"].rstrip("/") in AUTH_PATHS:
            address = address or address_key(self.client_address(scope))
            checks.append((self.auth, f"{KEY_PREFIX}{AUTH_POLICY}:{address}"))
        return checks

    async def check(self, checks: list[tuple[Policy, str]]) -> Verdict:
        """Ask Redis; while it is unavailable, only the auth policy applies, from memory."""
        if self.client is not None and self.breaker.allows():
            try:
                return await self._check_redis(checks)
            except (RedisError, OSError, TimeoutError) as exc:
                self._redis_failed(exc)
        memory_checks = [(policy, key) for policy, key in checks if policy is self.auth]
        if not memory_checks:
            return Verdict(True, ())
        return self.fallback.hit(memory_checks)

    async def _check_redis(self, checks: list[tuple[Policy, str]]) -> Verdict:
        verdict = await self._batch.call(checks)
        if self.breaker.succeeded():
            logger.info("rate limiter: redis reachable again")
        return verdict

    async def _check_batch(self, requests: list[list[tuple[Policy, str]]]) -> list[Verdict]:
        """One script call deciding every request of a loop turn, in order."""
        keys: list[str] = []
        args: list[int] = [len(requests)]
        for checks in requests:
            args.append(len(checks))
            for policy, key in checks:
                keys.append(key)
                args += [policy.limit, policy.window * 1000]
        kinds = self._generation_kinds
        if kinds:
            keys += [generation_key(kind) for kind in kinds]
            args.append(len(kinds))
        raw = await self._script(keys=keys, args=args, client=self.client)
        generations = None
        if kinds:
            found = raw[len(raw) - len(kinds) :]
            generations = {kind: value.decode() for kind, value in zip(kinds, found, strict=True)}
            raw = raw[: len(raw) - len(kinds)]
        values = [int(value) for value in raw]
        verdicts = []
        at = 0
        for checks in requests:
            decisions = tuple(
                Decision(policy, *values[at + 1 + 3 * i : at + 4 + 3 * i])
                for i, (policy, _) in enumerate(checks)
            )
            verdicts.append(Verdict(values[at] == 1, decisions, generations))
            at += 1 + 3 * len(checks)
        return verdicts

    def _redis_failed(self, exc: BaseException) -> None:
        self.breaker.trip()
        now = self.breaker.clock()
        if now - self._last_warning >= WARN_EVERY_SECONDS:
            self._last_warning = now
            logger.warning(
                "rate limiter: redis unavailable (%s); general limits off, auth limits per "
                "process until it answers",
                type(exc).__name__,
            )

    async def _refuse(self, scope: Scope, send: Send, verdict: Verdict) -> None:
        retry_after = verdict.retry_after
        incoming = _header(scope, b"x-request-id")
        request_id = request_id_from(incoming.decode("latin-1") if incoming else None)
        body = orjson.dumps(
            {"errors": {"body": [f"too many requests, retry in {retry_after} seconds"]}}
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry_after).encode()),
            (b"x-request-id", request_id.encode()),
            *verdict.headers(),
        ]
        for decision in verdict.decisions:
            if decision.retry_ms > 0:
                metrics.RATE_LIMIT_REFUSALS.labels(decision.policy.name).inc()
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if self.settings.access_log:
            access_logger.info(
                "%s %s %d",
                scope.get("method"),
                scope["path"],
                429,
                extra={
                    "method": scope.get("method"),
                    "path": scope["path"],
                    "status": 429,
                    "request_id": request_id,
                    "policies": [d.policy.name for d in verdict.decisions if d.retry_ms > 0],
                },
            )
