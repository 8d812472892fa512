"""The response cache for anonymous reads (service/http/response_cache.py), real Redis and
PostgreSQL.

Read-your-writes through this layer for every write endpoint is covered by
tests/caching/test_store.py, whose cached app runs with it on; here: what a hit looks like (the
same answer and headers as Flask's, no SQL, no Flask), variants by coding, 304s, HEAD,
per-request headers, what is never stored, single flight of concurrent misses, and Redis cut.
"""

from __future__ import annotations

import asyncio
import gzip
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import brotli  # type: ignore[import-untyped]
import httpx
import orjson
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from service.app import ConduitASGI, create_asgi
from service.caching.generations import ARTICLES, COMMENTS, KINDS, PROFILES, TAGS, bump
from service.caching.store import CACHE
from service.http.response_cache import (
    Entry,
    GenerationFence,
    LocalEntries,
    ResponseCache,
    route_kind,
    storable,
)
from service.infra.settings import Settings
from tests.apps import count_statements, running, serving
from tests.factories import TestUser
from tests.tcp_proxy import redis_proxy

API = "/api/v1"
ORIGIN = "https://app.example"
MakeUser = Callable[..., Awaitable[TestUser]]
# Made per answer: never compared between a miss and a hit.
PER_REQUEST = {"x-request-id", "date"}


@pytest_asyncio.fixture(scope="module")
async def app(settings: Settings) -> AsyncIterator[ConduitASGI]:
    """The served app, cache on, one allowed CORS origin, and 127.0.0.1 as a trusted proxy."""
    overrides = {"cors_origins": ORIGIN, "trusted_proxies": "127.0.0.1", "threads": 16}
    async with running(create_asgi(settings.model_copy(update=overrides))) as asgi:
        yield asgi


@pytest_asyncio.fixture
async def client(app: ConduitASGI) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests come from 127.0.0.1 (the trusted proxy)."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def layer(app: ConduitASGI) -> ResponseCache:
    found = app.pipeline.response_cache
    assert found is not None
    return found


def flask_calls(app: ConduitASGI) -> int:
    """Requests that reached the inner cache (i.e. Flask) so far."""
    stats = app.flask_app.extensions["conduit.cache"].stats
    return int(stats.hits + stats.misses + stats.bypassed)


def comparable(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in PER_REQUEST}


async def world(client: httpx.AsyncClient, make_user: MakeUser) -> tuple[TestUser, str]:
    alice = await make_user(username="alice", bio="bio")
    body = {
        "article": {"title": "Dragons", "description": "d", "body": "b" * 3000, "tagList": ["x"]}
    }
    response = await client.post(f"{API}/articles", json=body, headers=alice.headers)
    assert response.status_code == 201
    slug: str = response.json()["article"]["slug"]
    comment = {"comment": {"body": "hello"}}
    response = await client.post(
        f"{API}/articles/{slug}/comments", json=comment, headers=alice.headers
    )
    assert response.status_code == 200
    return alice, slug


def test_routes_map_to_the_kind_of_data_they_show() -> None:
    assert route_kind("/api/v1/articles") == ARTICLES
    assert route_kind("/api/v1/articles/dragons") == ARTICLES
    assert route_kind("/api/v1/articles/dragons/comments") == COMMENTS
    assert route_kind("/api/v1/tags") == TAGS
    assert route_kind("/api/v1/profiles/alice") == PROFILES
    for path in (
        "/api/v1/articles/feed",
        "/api/v1/user",
        "/api/v1/articles/dragons/favorite",
        "/api/v1/profiles/alice/follow",
        "/api/v1/openapi.json",
        "/api/v1/articles/",
        "/healthz",
    ):
        assert route_kind(path) is None, path


def test_answers_that_set_cookies_or_forbid_sharing_are_not_storable() -> None:
    assert storable([(b"content-type", b"application/json"), (b"cache-control", b"no-cache")])
    assert not storable([(b"Set-Cookie", b"a=b")])
    assert not storable([(b"cache-control", b"no-store")])
    assert not storable([(b"Cache-Control", b"max-age=0, Private")])
    assert not storable([(b"cache-control", b'private="x"')])


def test_entries_round_trip_headers_and_any_body_bytes() -> None:
    entry = Entry([(b"content-type", b"application/json"), (b"etag", b'W/"x"')], b"\n\x00\xff\n")
    assert Entry.load(entry.dump()) == entry
    assert entry.etag == b'W/"x"'


def test_local_copies_are_bounded_and_expire() -> None:
    now = [0.0]
    local = LocalEntries(ttl=10, max_entries=3, max_bytes=100, clock=lambda: now[0])
    for name in "abc":
        local.put(name, Entry([], b"x" * 10))
    assert local.get("a") is not None  # now the most recently used
    local.put("d", Entry([], b"x" * 10))
    assert [name for name in "abcd" if local.get(name) is not None] == ["a", "c", "d"]
    local.put("big", Entry([], b"x" * 95))  # over the byte bound: the oldest go
    assert local.get("big") is not None
    assert local.size <= 100
    assert len(local) == 1
    now[0] = 9.9
    assert local.get("big") is not None
    now[0] = 10.0
    assert local.get("big") is None
    assert (len(local), local.size) == (0, 0)


async def test_the_fence_reads_after_each_caller_arrived_and_shares_reads(rds: Redis) -> None:
    fence = GenerationFence()
    first = await fence.current(rds)
    assert set(first) == set(KINDS)
    reads = 0
    script = fence._script
    assert script is not None

    async def counted(**kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        assert script is not None
        return await script(**kwargs)

    fence._script = counted  # type: ignore[assignment]
    # A read is on its way when the bump lands: a caller that comes after the bump must not
    # get that read's answer.
    early = asyncio.ensure_future(fence.current(rds))
    for _ in range(3):
        await asyncio.sleep(0)
    await bump(client=rds, kinds=[TAGS])
    late = await fence.current(rds)
    assert int(late[TAGS]) == int(first[TAGS]) + 1
    assert int((await early)[TAGS]) >= int(first[TAGS])
    before = reads
    got = await asyncio.gather(*(fence.current(rds) for _ in range(50)))
    assert all(value == late for value in got)
    assert reads - before == 1  # callers of one turn of the loop share one read


async def test_a_repeated_anonymous_read_is_the_same_answer_without_flask_or_sql(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    _, slug = await world(client, make_user)
    paths = [
        "/articles?limit=20",
        "/articles?tag=x",
        f"/articles/{slug}",
        f"/articles/{slug}/comments",
        "/tags",
        "/profiles/alice",
    ]
    for path in paths:
        before = layer(app).stats.as_dict()
        miss = await client.get(API + path)
        assert miss.status_code == 200, path
        calls = flask_calls(app)
        with count_statements(app) as statements:
            hit = await client.get(API + path)
        assert statements == [], path
        assert flask_calls(app) == calls, path
        after = layer(app).stats.as_dict()
        assert after["misses"] - before["misses"] == 1, path
        assert after["stored"] - before["stored"] == 1, path
        assert after["hits"] - before["hits"] == 1, path
        assert hit.status_code == 200
        assert hit.content == miss.content
        assert comparable(hit) == comparable(miss), path
        assert hit.headers["cache-control"] == "no-cache"
        assert hit.headers["x-content-type-options"] == "nosniff"


async def test_each_coding_is_its_own_entry_and_decodes_to_the_same_answer(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    _, slug = await world(client, make_user)
    path = f"{API}/articles/{slug}"
    plain = await client.get(path, headers={"Accept-Encoding": "identity"})
    expected = plain.json()
    decoders = {"gzip": gzip.decompress, "br": brotli.decompress}
    for accept, coding in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("gzip, br;q=0.5", "gzip"),
        ("br, gzip", "br"),
    ]:
        for _ in range(2):  # a miss, then a hit
            # httpx would decode transparently: read the raw stream instead.
            request = client.build_request("GET", path, headers={"Accept-Encoding": accept})
            response = await client.send(request, stream=True)
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
            await response.aclose()
            assert response.headers["content-encoding"] == coding, accept
            assert orjson.loads(decoders[coding](raw)) == expected
            assert int(response.headers["content-length"]) == len(raw)
    for _ in range(2):
        response = await client.get(path, headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in response.headers
        assert response.json() == expected


async def test_if_none_match_gets_a_304_from_the_cache(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await world(client, make_user)
    first = await client.get(f"{API}/tags")
    etag = first.headers["etag"]
    await client.get(f"{API}/tags")  # stored
    before = layer(app).stats.not_modified
    calls = flask_calls(app)
    for value in (etag, f'"other", {etag}', "*", etag.removeprefix("W/")):
        response = await client.get(f"{API}/tags", headers={"If-None-Match": value})
        assert response.status_code == 304, value
        assert response.content == b""
        assert response.headers["etag"] == etag
        assert "content-type" not in response.headers
        assert "content-length" not in response.headers
    assert layer(app).stats.not_modified - before == 4
    assert flask_calls(app) == calls
    for garbage in ('"nope"', "W/", "\x7f", 'W/"' + "a" * 5000 + '"'):
        response = await client.get(f"{API}/tags", headers={"If-None-Match": garbage})
        assert response.status_code == 200, garbage
        assert response.json() == {"tags": ["x"]}


async def test_head_gets_the_headers_of_the_get_and_no_body(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    _, slug = await world(client, make_user)
    path = f"{API}/articles/{slug}"
    get = await client.get(path, headers={"Accept-Encoding": "gzip"})
    for _ in range(2):
        head = await client.head(path, headers={"Accept-Encoding": "gzip"})
        assert head.status_code == 200
        assert head.content == b""
        assert comparable(head) == comparable(get)


async def test_request_id_cors_and_hsts_are_made_for_each_answer(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await world(client, make_user)
    await client.get(f"{API}/tags")
    sent = await client.get(f"{API}/tags", headers={"X-Request-ID": "trace-42"})
    assert sent.headers["x-request-id"] == "trace-42"
    made = {(await client.get(f"{API}/tags")).headers["x-request-id"] for _ in range(2)}
    assert len(made) == 2
    bad = await client.get(f"{API}/tags", headers={"X-Request-ID": "bad\nid"})
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])

    allowed = await client.get(f"{API}/tags", headers={"Origin": ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    other = await client.get(f"{API}/tags", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    plain = await client.get(f"{API}/tags")
    assert "access-control-allow-origin" not in plain.headers
    assert "strict-transport-security" not in plain.headers
    https = await client.get(f"{API}/tags", headers={"X-Forwarded-Proto": "https"})
    assert "strict-transport-security" in https.headers
    assert https.json() == plain.json() == {"tags": ["x"]}


async def test_authenticated_reads_errors_and_other_routes_are_never_stored(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser, rds: Redis
) -> None:
    alice, slug = await world(client, make_user)
    bob = await make_user(username="bob")
    response = await client.post(f"{API}/articles/{slug}/favorite", headers=bob.headers)
    assert response.status_code == 200
    stored = layer(app).stats.stored
    for _ in range(2):
        mine = await client.get(f"{API}/articles/{slug}", headers=bob.headers)
        assert mine.json()["article"]["favorited"] is True
        assert mine.headers["cache-control"] == "no-store"
        assert (await client.get(f"{API}/articles/nope")).status_code == 404
        assert (await client.get(f"{API}/articles?limit=-1")).status_code == 422
        assert (await client.get(f"{API}/articles/feed")).status_code == 401
        assert (await client.get(f"{API}/user", headers=alice.headers)).status_code == 200
    assert layer(app).stats.stored == stored
    keys = [key async for key in rds.scan_iter(match="c:*:http:*")]
    assert keys == []
    anonymous = await client.get(f"{API}/articles/{slug}")
    assert anonymous.json()["article"]["favorited"] is False
    again = await client.get(f"{API}/articles/{slug}")
    assert again.json()["article"]["favorited"] is False
    assert layer(app).stats.stored == stored + 1


async def test_a_write_makes_the_next_anonymous_read_fresh(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    alice, slug = await world(client, make_user)
    for _ in range(2):
        assert (await client.get(f"{API}/articles/{slug}")).json()["article"]["favoritesCount"] == 0
    bob = await make_user(username="bob")
    await client.post(f"{API}/articles/{slug}/favorite", headers=bob.headers)
    assert (await client.get(f"{API}/articles/{slug}")).json()["article"]["favoritesCount"] == 1
    update = {"user": {"bio": "new bio"}}
    assert (await client.put(f"{API}/user", json=update, headers=alice.headers)).status_code == 200
    assert (await client.get(f"{API}/profiles/alice")).json()["profile"]["bio"] == "new bio"
    author = (await client.get(f"{API}/articles/{slug}")).json()["article"]["author"]
    assert author["bio"] == "new bio"


async def test_concurrent_misses_of_one_answer_go_through_flask_once(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await world(client, make_user)
    before = layer(app).stats.as_dict()
    calls = flask_calls(app)
    got = await asyncio.gather(*(client.get(f"{API}/articles?limit=5") for _ in range(20)))
    assert {r.status_code for r in got} == {200}
    assert len({r.content for r in got}) == 1
    after = layer(app).stats.as_dict()
    assert flask_calls(app) - calls == 1
    assert after["stored"] - before["stored"] == 1
    # Requests whose look-up began before the load finished count as misses (answered by the
    # one load); later ones, once its answer is kept, as hits. How many of each depends on
    # scheduling (with Flask on the loop, the load can finish before the last look-up starts).
    assert 1 <= after["misses"] - before["misses"] <= 20
    assert after["hits"] - before["hits"] >= 20 - (after["misses"] - before["misses"])


async def test_redis_cut_sends_reads_to_flask_and_they_stay_right(
    settings: Settings, make_user: MakeUser
) -> None:
    proxy, url = redis_proxy(settings.redis_url)
    await proxy.start()
    asgi = create_asgi(settings.model_copy(update={"redis_url": url.format(port=proxy.port)}))
    try:
        async with serving(asgi) as http:
            alice = await make_user(username="alice")
            await http.get(f"{API}/tags")
            await http.get(f"{API}/tags")
            assert layer(asgi).stats.hits == 1
            await proxy.stop()
            body = {"article": {"title": "T", "description": "d", "body": "b", "tagList": ["new"]}}
            created = await http.post(f"{API}/articles", json=body, headers=alice.headers)
            assert created.status_code == 201
            for _ in range(3):
                response = await http.get(f"{API}/tags")
                assert response.status_code == 200
                assert response.json() == {"tags": ["new"]}
            assert layer(asgi).stats.hits == 1
            await proxy.start()
            await asyncio.sleep(1.1)  # the back-off after a Redis failure
            for _ in range(2):
                response = await http.get(f"{API}/tags")
                assert response.json() == {"tags": ["new"]}
            assert layer(asgi).stats.hits >= 1
    finally:
        await proxy.stop()


@pytest.mark.parametrize("limiter", [False, True], ids=["fence", "rate-limiter-script"])
async def test_a_write_through_one_process_is_seen_by_the_next_read_of_another(
    settings: Settings, client: httpx.AsyncClient, make_user: MakeUser, limiter: bool
) -> None:
    """The other process reads the generations with its own fence, or with rate limits on,
    in the limiter's script (then the fence is never asked)."""
    alice, slug = await world(client, make_user)
    overrides = {
        "threads": 8,
        "rate_limit_enabled": limiter,
        "rate_limit_anonymous_per_minute": 10**6,
    }
    other = create_asgi(settings.model_copy(update=overrides))
    fence_reads = 0
    fence = layer(other).fence
    read = fence.current

    async def counted(redis: Redis) -> dict[str, str]:
        nonlocal fence_reads
        fence_reads += 1
        return await read(redis)

    fence.current = counted  # type: ignore[method-assign]
    async with serving(other) as second:
        paths = [f"/articles/{slug}", "/articles", f"/articles/{slug}/comments", "/tags"]
        paths.append("/profiles/alice")
        for path in paths * 2:  # each now kept in the other process too
            assert (await second.get(API + path)).status_code == 200
        assert len(layer(other).local) >= len(paths)

        article = f"{API}/articles/{slug}"
        changed = {"article": {"body": "changed", "tagList": ["y"]}}
        response = await client.put(article, json=changed, headers=alice.headers)
        assert response.status_code == 200
        assert (await second.get(article)).json()["article"]["body"] == "changed"
        assert (await second.get(f"{API}/articles")).json()["articles"][0]["tagList"] == ["y"]
        assert (await second.get(f"{API}/tags")).json() == {"tags": ["y"]}
        comment = {"comment": {"body": "second"}}
        await client.post(f"{article}/comments", json=comment, headers=alice.headers)
        assert len((await second.get(f"{article}/comments")).json()["comments"]) == 2
        update = {"user": {"bio": "changed bio"}}
        await client.put(f"{API}/user", json=update, headers=alice.headers)
        profile = (await second.get(f"{API}/profiles/alice")).json()["profile"]
        assert profile["bio"] == "changed bio"
    assert layer(other).stats.hits >= len(paths)
    assert (fence_reads == 0) is limiter


async def test_metrics_show_the_response_cache_counters(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await world(client, make_user)
    for _ in range(3):
        await client.get(f"{API}/tags")
    outcomes = ("hits", "not_modified", "misses", "stored", "bypassed")

    def exported() -> dict[str, float]:
        return {
            outcome: REGISTRY.get_sample_value("conduit_response_cache_total", {"outcome": outcome})
            or 0.0
            for outcome in outcomes
        }

    before = exported()
    app.metrics_sampler().sample()
    counts = {outcome: exported()[outcome] - before[outcome] for outcome in outcomes}
    stats = CACHE.get(app.flask_app).response_stats
    assert stats is not None
    assert counts == {outcome: float(value) for outcome, value in stats.as_dict().items()}
    assert counts["hits"] >= 2


async def test_a_miss_whose_request_fails_lets_its_waiters_go_through_themselves(
    app: ConduitASGI,
) -> None:
    """Concurrent misses of one entry wait for the first; if its request fails, they do not
    hang and do not fail with it: each goes through the app itself."""
    base = layer(app)
    calls = 0
    release = asyncio.Event()

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()
            raise RuntimeError("the first request fails")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    cache = ResponseCache(
        app=inner,
        state=base.state,
        policy=base.policy,
        redis_state=base.redis_state,
        access_log=False,
    )
    scope = {
        "type": "http",
        "method": "GET",
        "path": f"{API}/profiles/nobody-yet",
        "query_string": b"",
        "headers": [],
        "scheme": "http",
        "client": ("127.0.0.1", 1),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def reached(condition: Callable[[], bool]) -> None:
        for _ in range(5000):  # at most 5 s
            if condition():
                return
            await asyncio.sleep(0.001)
        raise AssertionError("not reached")

    first = asyncio.ensure_future(cache(dict(scope), receive, send))
    await reached(lambda: calls == 1)  # the first request is in the app
    second = asyncio.ensure_future(cache(dict(scope), receive, send))
    await reached(lambda: cache.stats.misses == 2)  # the second waits for the first
    release.set()
    outcomes = await asyncio.wait_for(
        asyncio.gather(first, second, return_exceptions=True), timeout=5
    )
    assert isinstance(outcomes[0], RuntimeError)
    assert outcomes[1] is None
    assert (calls, statuses) == (2, [200])
    assert cache.inflight == {}
