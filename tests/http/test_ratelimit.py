"""Rate limits through the served ASGI app, with real Redis (and Redis cut or stalled).

Each test builds its own app with the limits it needs (`rate_limit_enabled=True`); the Redis
database is flushed after every test, so buckets start full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from service.app import ConduitASGI, create_asgi
from service.http.ratelimit import (
    AUTH_PATHS,
    MemoryLimiter,
    Policy,
    RateLimitMiddleware,
    address_key,
)
from service.infra.settings import Settings
from service.infra.web_security import ProxyTrust, parse_ip
from service.services import login_guard
from service.services.security import Tokens
from tests import factories
from tests.net import free_port
from tests.tcp_proxy import redis_proxy

PEER = ("127.0.0.1", 50000)
LOGIN = "/api/v1/users/login"
Serve = Callable[..., AbstractAsyncContextManager[ConduitASGI]]


@pytest.fixture
def serve(settings: Settings, app: ConduitASGI) -> Serve:
    """`async with serve(**overrides) as asgi:` an app with rate limits on."""

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[ConduitASGI]:
        asgi = create_asgi(
            settings.model_copy(update={"rate_limit_enabled": True, "threads": 8, **overrides})
        )
        await asgi.startup()
        try:
            yield asgi
        finally:
            await asgi.shutdown()

    return start


def http(asgi: ConduitASGI, peer: tuple[str, int] = PEER) -> httpx.AsyncClient:
    """A client whose connection comes from `peer`."""
    transport = httpx.ASGITransport(app=asgi, client=peer)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


WRONG_PASSWORD = "wrong-password"


def login_body(email: str, password: str = WRONG_PASSWORD) -> dict[str, Any]:
    return {"user": {"email": email, "password": password}}


def parse_limits(value: str) -> dict[str, dict[str, int]]:
    """`"default";r=1;t=2, "auth";r=0;t=5` -> {"default": {"r": 1, "t": 2}, ...}."""
    parsed: dict[str, dict[str, int]] = {}
    for item in value.split(","):
        name, *params = item.strip().split(";")
        parsed[name.strip('"')] = {k: int(v) for k, v in (p.split("=") for p in params)}
    return parsed


def assert_refused(response: httpx.Response, policy: str) -> int:
    """A limiter 429: envelope, Retry-After, headers; returns Retry-After."""
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/json"
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    assert response.json() == {
        "errors": {"body": [f"too many requests, retry in {retry_after} seconds"]}
    }
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert parse_limits(response.headers["ratelimit"])[policy]["r"] == 0
    # Answered without Flask, still hardened.
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    return retry_after


async def test_anonymous_limit_headers_and_refusal(serve: Serve) -> None:
    async with serve(rate_limit_anonymous_per_minute=3) as asgi, http(asgi) as client:
        remaining = []
        for _ in range(3):
            response = await client.get("/api/v1/tags")
            assert response.status_code == 200
            assert response.headers["ratelimit-policy"] == '"default";q=3;w=60'
            limits = parse_limits(response.headers["ratelimit"])
            remaining.append(limits["default"]["r"])
            assert 1 <= limits["default"]["t"] <= 60
        assert remaining == [2, 1, 0]

        refused = await client.get("/api/v1/tags", headers={"X-Request-ID": "abc-123"})
        assert refused.status_code == 429
        assert refused.headers["x-request-id"] == "abc-123"
        assert refused.headers["ratelimit-policy"] == '"default";q=3;w=60'
        retry_after = refused.headers["retry-after"]
        assert refused.json() == {
            "errors": {"body": [f"too many requests, retry in {retry_after} seconds"]}
        }
        # One request per 20 s comes back: the next one is allowed in 20 s at most.
        assert 19 <= int(refused.headers["retry-after"]) <= 20

        # A refusal charges nothing: retrying early does not push the next slot back.
        refused_again = await client.get("/api/v1/tags")
        assert refused_again.status_code == 429
        assert int(refused_again.headers["retry-after"]) <= int(refused.headers["retry-after"])


async def test_refusal_uses_fresh_request_id_when_unsafe(serve: Serve) -> None:
    async with serve(rate_limit_anonymous_per_minute=1) as asgi, http(asgi) as client:
        await client.get("/api/v1/tags")
        refused = await client.get("/api/v1/tags", headers={"X-Request-ID": "bad id\r\n"})
        assert_refused(refused, "default")


async def test_health_probes_are_never_limited(serve: Serve) -> None:
    async with serve(rate_limit_anonymous_per_minute=1) as asgi, http(asgi) as client:
        for _ in range(4):
            for path in ("/healthz", "/readyz"):
                response = await client.get(path)
                assert response.status_code == 200
                assert "ratelimit" not in response.headers
        assert (await client.get("/api/v1/tags")).status_code == 200
        assert (await client.get("/api/v1/tags")).status_code == 429


async def test_authenticated_callers_are_limited_per_user(serve: Serve) -> None:
    overrides = {"rate_limit_anonymous_per_minute": 2, "rate_limit_authenticated_per_minute": 4}
    async with serve(**overrides) as asgi, http(asgi) as client:
        jake = await factories.make_user(asgi, username="jake")
        jane = await factories.make_user(asgi, username="jane")
        for expected in (3, 2, 1, 0):
            response = await client.get("/api/v1/user", headers=jake.headers)
            assert response.status_code == 200
            assert response.headers["ratelimit-policy"] == '"default";q=4;w=60'
            assert parse_limits(response.headers["ratelimit"])["default"]["r"] == expected
        assert_refused(await client.get("/api/v1/user", headers=jake.headers), "default")
        # Bearer is the same principal.
        bearer = {"Authorization": f"Bearer {jake.token}"}
        assert_refused(await client.get("/api/v1/user", headers=bearer), "default")
        # Another user from the same address, and anonymous requests, have their own buckets.
        assert (await client.get("/api/v1/user", headers=jane.headers)).status_code == 200
        anonymous = await client.get("/api/v1/tags")
        assert anonymous.status_code == 200
        assert anonymous.headers["ratelimit-policy"] == '"default";q=2;w=60'


async def test_invalid_token_counts_as_anonymous(serve: Serve) -> None:
    async with serve(rate_limit_anonymous_per_minute=2) as asgi, http(asgi) as client:
        forged = {"Authorization": "Token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.AAAA"}
        first = await client.get("/api/v1/user", headers=forged)
        assert first.status_code == 401
        assert first.headers["ratelimit-policy"] == '"default";q=2;w=60'
        assert (await client.get("/api/v1/tags")).status_code == 200
        # The forged-token request and the anonymous one shared the address's bucket.
        assert_refused(await client.get("/api/v1/user", headers=forged), "default")
        assert_refused(await client.get("/api/v1/user", headers={"Authorization": "x"}), "default")


async def test_clients_are_told_apart_by_address(serve: Serve) -> None:
    async with (
        serve(rate_limit_anonymous_per_minute=1) as asgi,
        http(asgi, ("10.0.0.1", 1)) as first,
        http(asgi, ("10.0.0.2", 1)) as second,
    ):
        assert (await first.get("/api/v1/tags")).status_code == 200
        assert (await second.get("/api/v1/tags")).status_code == 200
        assert (await first.get("/api/v1/tags")).status_code == 429
        assert (await second.get("/api/v1/tags")).status_code == 429


async def test_forwarded_for_is_believed_only_from_trusted_proxies(serve: Serve) -> None:
    overrides = {"rate_limit_anonymous_per_minute": 1, "trusted_proxies": "127.0.0.1, 10.1.0.0/16"}
    async with (
        serve(**overrides) as asgi,
        http(asgi, ("127.0.0.1", 1)) as proxy,
        http(asgi, ("192.0.2.7", 1)) as direct,
    ):

        async def tags(client: httpx.AsyncClient, forwarded: str | None = None) -> httpx.Response:
            headers = {"X-Forwarded-For": forwarded} if forwarded else {}
            return await client.get("/api/v1/tags", headers=headers)

        # Through the trusted proxy: one bucket per forwarded client.
        assert (await tags(proxy, "203.0.113.5")).status_code == 200
        assert (await tags(proxy, "203.0.113.6")).status_code == 200
        # Forged entries on the left do not help: the right-most untrusted one counts,
        # skipping our own proxies (10.1.x.x).
        assert (await tags(proxy, "1.1.1.1, 203.0.113.5")).status_code == 429
        assert (await tags(proxy, "2.2.2.2, 203.0.113.5, 10.1.2.3")).status_code == 429
        # A direct client cannot pick its address with the header.
        assert (await tags(direct, "203.0.113.50")).status_code == 200
        assert (await tags(direct, "203.0.113.51")).status_code == 429
        assert (await tags(direct)).status_code == 429


def test_client_address_resolution() -> None:
    proxies = ProxyTrust("127.0.0.1, 10.0.0.0/8, ::1")
    assert proxies.client_ip("192.0.2.1", ["198.51.100.1"]) == parse_ip("192.0.2.1")
    assert proxies.client_ip("127.0.0.1", ["198.51.100.1"]) == parse_ip("198.51.100.1")
    assert proxies.client_ip("::1", ["a, 198.51.100.1", "10.0.0.2"]) == parse_ip("198.51.100.1")
    # Only proxies in the chain: the left-most of them is the best we know.
    assert proxies.client_ip("127.0.0.1", ["10.0.0.3, 10.0.0.2"]) == parse_ip("10.0.0.3")
    # Garbage written right of a real address: stop at the last sane one.
    assert proxies.client_ip("127.0.0.1", ["198.51.100.1, junk"]) == parse_ip("127.0.0.1")
    assert proxies.client_ip("127.0.0.1", []) == parse_ip("127.0.0.1")
    assert proxies.client_ip(None, ["198.51.100.1"]) is None
    assert ProxyTrust("").client_ip("127.0.0.1", ["198.51.100.1"]) == parse_ip("127.0.0.1")
    # IPv4-mapped IPv6 is the IPv4 address; IPv6 clients share a bucket per /64.
    assert parse_ip("::ffff:192.0.2.1") == parse_ip("192.0.2.1")
    assert address_key(parse_ip("2001:db8:1:2:aaaa::1")) == "ip:2001:0db8:0001:0002::/64"
    assert address_key(parse_ip("2001:db8:1:2:bbbb::2")) == "ip:2001:0db8:0001:0002::/64"
    assert address_key(parse_ip("192.0.2.1")) == "ip:192.0.2.1"
    assert address_key(None) == "ip:unknown"
    with pytest.raises(ValueError, match="TRUSTED_PROXIES: 'nope'"):
        ProxyTrust("127.0.0.1, nope")


async def test_credential_endpoints_have_a_tight_per_address_limit(serve: Serve) -> None:
    overrides = {"rate_limit_anonymous_per_minute": 100, "rate_limit_auth_per_minute": 3}
    async with serve(**overrides) as asgi, http(asgi) as client:
        user = await factories.make_user(asgi, username="jake")
        for i in range(3):
            response = await client.post(LOGIN, json=login_body(f"nobody{i}@example.com"))
            assert response.status_code == 401
            policies = response.headers["ratelimit-policy"]
            assert policies == '"default";q=100;w=60, "auth";q=3;w=60'
            assert parse_limits(response.headers["ratelimit"])["auth"]["r"] == 2 - i
        retry_after = assert_refused(await client.post(LOGIN, json=login_body("x@y.z")), "auth")
        assert 19 <= retry_after <= 20
        # Registration shares the budget; a token does not lift it (keyed by address).
        register = {"user": {"username": "new", "email": "new@example.com", "password": "x" * 8}}
        assert_refused(await client.post("/api/v1/users", json=register), "auth")
        assert_refused(
            await client.post(LOGIN, json=login_body("x@y.z"), headers=user.headers), "auth"
        )
        # The rest of the API is not affected.
        assert (await client.get("/api/v1/tags")).status_code == 200
        assert (await client.get("/api/v1/user", headers=user.headers)).status_code == 200
        # Another address still may log in.
        async with http(asgi, ("10.9.9.9", 1)) as other:
            ok = await other.post(LOGIN, json=login_body(user.email, user.password))
            assert ok.status_code == 200


def test_credential_paths() -> None:
    assert {
        "/api/v1/users",
        "/api/v1/users/login",
        "/api/v1/oauth/token",
        "/api/v1/users/password-reset",
        "/api/v1/users/password-reset/confirm",
    } == AUTH_PATHS


async def test_login_flood_holds_the_limit(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    """1,000 rapid login attempts on one account from one address: the auth limit holds, every
    attempt gets a defined answer, none a 5xx."""
    limit = 10
    overrides = {"rate_limit_anonymous_per_minute": 5000, "rate_limit_auth_per_minute": limit}
    async with serve(**overrides) as asgi, http(asgi) as client:
        user = await factories.make_user(asgi, username="victim")
        statuses: Counter[tuple[int, str]] = Counter()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            for _ in range(20):
                batch = await asyncio.gather(
                    *(client.post(LOGIN, json=login_body(user.email)) for _ in range(50))
                )
                for response in batch:
                    assert response.status_code in {401, 429}, response.text
                    assert response.headers["x-content-type-options"] == "nosniff"
                    if response.status_code == 429:
                        message = response.json()["errors"]["body"][0]
                        assert int(response.headers["retry-after"]) >= 1
                        kind = "guard" if "failed logins" in message else "limiter"
                        if kind == "limiter":
                            assert_refused(response, "auth")
                    else:
                        kind = "app"
                        assert response.json() == {
                            "errors": {"credentials": ["email or password is invalid"]}
                        }
                    statuses[(response.status_code, kind)] += 1
        elapsed = time.monotonic() - started
        assert sum(statuses.values()) == 1000
        # The bucket refills one request per 6 s: the flood got `limit` plus the refill.
        reached_app = statuses[(401, "app")] + statuses[(429, "guard")]
        assert limit <= reached_app <= limit + int(elapsed / 6) + 1, (statuses, elapsed)
        # ... and of those, the account lock let 5 be tried before refusing (one more per
        # refill that came after the lock's first second).
        assert login_guard.THRESHOLD <= statuses[(401, "app")] <= reached_app - limit + 5
        assert statuses[(429, "limiter")] == 1000 - reached_app
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        # Redis kept up: the shared limits never switched to the fallback.
        assert not [r for r in caplog.records if r.name.startswith("conduit.")], caplog.text


async def test_account_backoff_across_addresses(serve: Serve, server_urls: tuple[str, str]) -> None:
    """Wrong passwords from many addresses (behind a trusted proxy) lock the account with a
    doubling delay; the right password waits too; success clears it."""
    overrides = {"rate_limit_auth_per_minute": 3, "trusted_proxies": "127.0.0.1"}
    redis = Redis.from_url(server_urls[1])
    async with serve(**overrides) as asgi, http(asgi) as proxy:
        user = await factories.make_user(asgi, username="victim")
        addresses = (f"198.51.100.{i}" for i in range(1, 200))

        async def attempt(password: str = WRONG_PASSWORD) -> httpx.Response:
            return await proxy.post(
                LOGIN,
                json=login_body(user.email.upper(), password),
                headers={"X-Forwarded-For": next(addresses)},
            )

        for _ in range(5):
            assert (await attempt()).status_code == 401
        locked = await attempt()
        assert locked.status_code == 429
        assert locked.headers["retry-after"] == "1"
        assert locked.json() == {
            "errors": {"body": ["too many failed logins for this account, retry in 1 seconds"]}
        }
        # The right password is refused while locked: the lock does not tell guesses apart.
        assert (await attempt(user.password)).status_code == 429

        await asyncio.sleep(1.05)
        assert (await attempt()).status_code == 401  # 6th failure: 2 s
        assert (await attempt()).headers["retry-after"] == "2"
        count_key, lock_key = login_guard.keys(user.email)
        await redis.delete(lock_key)  # as if the 2 s had passed
        assert (await attempt()).status_code == 401  # 7th failure: 4 s
        refused = await attempt(user.password)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "4"

        await redis.delete(lock_key)
        assert (await attempt(user.password)).status_code == 200
        assert await redis.exists(count_key, lock_key) == 0
        assert (await attempt()).status_code == 401  # a fresh count after a success
    await redis.aclose()


async def test_concurrent_guesses_from_many_addresses_get_five_tries(serve: Serve) -> None:
    overrides = {"trusted_proxies": "127.0.0.1"}
    async with serve(**overrides) as asgi, http(asgi) as proxy:
        user = await factories.make_user(asgi, username="victim")
        responses = await asyncio.gather(
            *(
                proxy.post(
                    LOGIN,
                    json=login_body(user.email),
                    headers={"X-Forwarded-For": f"203.0.113.{i}"},
                )
                for i in range(1, 101)
            )
        )
        statuses = Counter(response.status_code for response in responses)
        assert statuses == {401: login_guard.THRESHOLD, 429: 100 - login_guard.THRESHOLD}


async def test_concurrent_requests_of_one_client_are_decided_in_order(serve: Serve) -> None:
    """Requests arriving together are decided by one script call, one after the other: the
    limit holds exactly, and each sees the charge of those before it."""
    async with (
        serve(rate_limit_anonymous_per_minute=5) as asgi,
        http(asgi) as first,
        http(asgi, ("192.0.2.99", 1)) as second,
    ):
        got = await asyncio.gather(*(first.get("/api/v1/tags") for _ in range(12)))
        other = await asyncio.gather(*(second.get("/api/v1/tags") for _ in range(3)))
    statuses = Counter(response.status_code for response in got)
    assert statuses == {200: 5, 429: 7}
    remaining = sorted(
        int(response.headers["ratelimit"].split("r=")[1].split(";")[0])
        for response in got
        if response.status_code == 200
    )
    assert remaining == [0, 1, 2, 3, 4]
    assert [response.status_code for response in other] == [200, 200, 200]


async def test_a_limit_finer_than_the_clock_still_goes_through_redis(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """At a billion per minute one request moves the bucket less than the server clock's
    precision: the bucket still gets a valid expiry, and the limiter does not fail open."""
    async with serve(rate_limit_anonymous_per_minute=10**9) as asgi, http(asgi) as client:
        for _ in range(3):
            response = await client.get("/api/v1/tags")
            assert response.status_code == 200
            assert parse_limits(response.headers["ratelimit"])["default"]["r"] > 10**8
    assert "redis unavailable" not in caplog.text


async def test_redis_down_fails_open_but_keeps_auth_limit(
    serve: Serve, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    assert settings.redis_url is not None
    proxy, url = redis_proxy(settings.redis_url)
    await proxy.start()
    overrides = {
        "redis_url": url.format(port=proxy.port),
        "rate_limit_anonymous_per_minute": 2,
        "rate_limit_auth_per_minute": 3,
    }
    try:
        async with serve(**overrides) as asgi, http(asgi) as client:
            assert (await client.get("/api/v1/tags")).status_code == 200
            await proxy.stop()
            with caplog.at_level(logging.WARNING, logger="conduit.ratelimit"):
                # General limit: open (no headers, more than 2 requests pass).
                for _ in range(5):
                    response = await client.get("/api/v1/tags")
                    assert response.status_code == 200
                    assert "ratelimit" not in response.headers
                # Auth limit: from this process's memory, same numbers.
                for _ in range(3):
                    response = await client.post(LOGIN, json=login_body("a@example.com"))
                    assert response.status_code == 401
                    assert response.headers["ratelimit-policy"] == '"auth";q=3;w=60'
                assert_refused(await client.post(LOGIN, json=login_body("a@example.com")), "auth")
            warnings = [r for r in caplog.records if r.name == "conduit.ratelimit"]
            assert len(warnings) == 1, warnings  # once, not per request
            assert "redis unavailable" in warnings[0].getMessage()

            # Redis back: after the one-second pause the shared limits apply again.
            await proxy.start()
            await asyncio.sleep(1.1)
            response = await client.get("/api/v1/tags")
            assert response.headers["ratelimit-policy"] == '"default";q=2;w=60'
    finally:
        await proxy.stop()


async def _blackhole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Accepts and reads, never answers: a stalled Redis.
    with contextlib.suppress(Exception):
        while await reader.read(65536):
            pass
    writer.close()


async def test_slow_redis_costs_at_most_the_timeout(settings: Settings) -> None:
    """Direct middleware test: Redis accepts but never answers."""
    server = await asyncio.start_server(_blackhole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    calls = 0

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limiter = RateLimitMiddleware(
        inner,
        settings=settings.model_copy(update={"rate_limit_auth_per_minute": 1}),
        redis_url=f"redis://127.0.0.1:{port}/0",
        tokens=Tokens("x" * 32, timedelta(minutes=1)),
    )
    await limiter.startup()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=limiter), base_url="http://t"
        ) as client:
            started = time.monotonic()
            first = await client.get("/api/v1/tags")
            first_took = time.monotonic() - started
            assert first.status_code == 204
            assert first_took < 0.5
            # Within the pause after a failure, Redis is not asked: no wait at all.
            started = time.monotonic()
            assert (await client.post(LOGIN)).status_code == 204
            assert (await client.post(LOGIN)).status_code == 429
            assert time.monotonic() - started < 0.1
            assert calls == 2
    finally:
        await limiter.shutdown()
        server.close()
        await server.wait_closed()


async def test_unreachable_redis_at_a_closed_port(settings: Settings) -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limiter = RateLimitMiddleware(
        inner,
        settings=settings.model_copy(update={"rate_limit_auth_per_minute": 2}),
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        tokens=Tokens("x" * 32, timedelta(minutes=1)),
    )
    await limiter.startup()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=limiter), base_url="http://t"
        ) as client:
            assert [(await client.get("/x")).status_code for _ in range(5)] == [204] * 5
            codes = [(await client.post(LOGIN)).status_code for _ in range(3)]
            assert codes == [204, 204, 429]
    finally:
        await limiter.shutdown()


def test_memory_limiter_matches_the_redis_arithmetic() -> None:
    limiter = MemoryLimiter()
    policy = Policy("auth", limit=3, window=60)
    checks = [(policy, "k")]
    verdicts = [limiter.hit(checks, now_ms=1_000_000) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.decisions[0].remaining for v in verdicts] == [2, 1, 0, 0]
    assert verdicts[0].decisions[0].reset_ms == 20_000
    assert verdicts[2].decisions[0].reset_ms == 60_000
    assert verdicts[3].retry_after == 20
    # One comes back every 20 s.
    assert limiter.hit(checks, now_ms=1_019_999).allowed is False
    assert limiter.hit(checks, now_ms=1_020_000).allowed is True


def test_memory_limiter_is_bounded() -> None:
    limiter = MemoryLimiter(max_keys=100)
    policy = Policy("auth", limit=1, window=60)
    for i in range(1000):
        limiter.hit([(policy, f"k{i}")], now_ms=0)
        assert len(limiter._tats) <= 101
    # The most recent clients are still remembered.
    assert limiter.hit([(policy, "k999")], now_ms=1).allowed is False


async def test_disabled_means_no_limits(serve: Serve) -> None:
    overrides = {"rate_limit_enabled": False, "rate_limit_anonymous_per_minute": 1}
    async with serve(**overrides) as asgi, http(asgi) as client:
        for _ in range(3):
            response = await client.get("/api/v1/tags")
            assert response.status_code == 200
            assert "ratelimit" not in response.headers
