"""Whole-response cache for anonymous reads, on the event loop in front of Flask (ASGI).

`service.caching.store` caches the shared part of an answer, but every request still crosses to a
worker thread, runs Flask's routing, validation and serialisation and comes back: that
round trip is most of what an anonymous read costs once its data is cached. This layer keeps
the finished answer (compressed body, `ETag` and the other representation headers) and serves
a repeat of the same anonymous `GET`/`HEAD` without a thread or Flask.

Exactness is `service.caching.store`'s: each route reads under the generation counter of the kind of
data it shows (`ROUTES`), and an entry is stored under the generation read *before* the answer
was computed, so a write that commits meanwhile (and bumps the counter before its own response
is sent) makes it unreachable. The invalidation state is shared with `service.caching.store`
too: after a Redis failure, or while a bump of this process is pending, requests go to Flask.

The rules in detail: docs/http.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from service.caching import store as cache_module
from service.caching.generations import (
    ARTICLES,
    COMMENTS,
    KINDS,
    PROFILES,
    START_GENERATION_LUA,
    TAGS,
    generation_key,
)
from service.caching.store import CacheState, ResponseStats, cache, digest
from service.http import conditional
from service.http.conditional import (
    REPRESENTATION_HEADERS,
    RequestHeaders,
    choose_coding,
    identity_refused,
    none_match,
    parse_accept_encoding,
)
from service.http.generations import RequestGenerations
from service.http.types import ASGIApp, Message, Receive, Scope, Send
from service.infra.batching import TurnBatch
from service.infra.observability import log_access, request_id_from
from service.infra.redis import RedisState
from service.infra.web_security import SecurityPolicy

logger = logging.getLogger("conduit.response_cache")

METHODS = frozenset({"GET", "HEAD"})
# Path (as routed, percent-decoded) to the kind of data the answer shows. `feed` needs a
# token (an anonymous request gets a 401, which is never stored), but is kept out anyway.
ROUTES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"/api/v1/articles"), ARTICLES),
    (re.compile(r"/api/v1/articles/(?!feed$)[^/]+"), ARTICLES),
    (re.compile(r"/api/v1/articles/[^/]+/comments"), COMMENTS),
    (re.compile(r"/api/v1/tags"), TAGS),
    (re.compile(r"/api/v1/profiles/[^/]+"), PROFILES),
)
# The headers kept with the body; the others are made per request.
# `link` is made from the path and query alone (relative references), both in the key.
STORED_HEADERS = frozenset(
    {b"content-type", b"content-encoding", b"etag", b"cache-control", b"vary", b"link"}
)
# Answers larger than this are not stored (a page of 100 long articles stays far below).
MAX_ENTRY_BYTES = 512 * 1024
# Bounds of the in-process copies (`LocalEntries`).
LOCAL_MAX_ENTRIES = 4096
LOCAL_MAX_BYTES = 64 * 1024 * 1024
GENERATION_KEYS = [generation_key(kind) for kind in KINDS]
# Per-request header sets kept, by (Origin, https).
HEADER_MEMO_SIZE = 256
# Every kind's generation, starting counters that do not exist (see service.caching.store).
READ_GENERATIONS_SCRIPT = (
    START_GENERATION_LUA
    + """
local values = {}
for i, key in ipairs(KEYS) do values[i] = generation(key) end
return values
"""
)


def storable(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """False for an answer that must not be shared: it sets a cookie, or says so itself."""
    for name, value in headers:
        name = name.lower()
        if name == b"set-cookie":
            return False
        if name == b"cache-control":
            directives = {part.split(b"=")[0].strip().lower() for part in value.split(b",")}
            if directives & {b"no-store", b"private"}:
                return False
    return True


def route_kind(path: str) -> str | None:
    """The cached kind the answer of `path` is made of, or None when it is not cached."""
    for pattern, kind in ROUTES:
        if pattern.fullmatch(path):
            return kind
    return None


@dataclass(frozen=True)
class Entry:
    """A stored answer: its representation headers and its (possibly compressed) body."""

    headers: list[tuple[bytes, bytes]]
    body: bytes

    def dump(self) -> bytes:
        """The bytes stored in Redis: a JSON header line, then the body."""
        names = [[name.decode("latin-1"), value.decode("latin-1")] for name, value in self.headers]
        return orjson.dumps(names) + b"\n" + self.body

    @classmethod
    def load(cls, raw: bytes) -> Entry:
        """The entry `dump` wrote."""
        line, _, body = raw.partition(b"\n")
        headers = [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in orjson.loads(line)
        ]
        return cls(headers, body)

    @functools.cached_property
    def etag(self) -> bytes | None:
        """The stored `ETag`."""
        return next((value for name, value in self.headers if name == b"etag"), None)

    @functools.cached_property
    def full_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers of a `200` with this body."""
        return [*self.headers, (b"content-length", str(len(self.body)).encode())]

    @functools.cached_property
    def not_modified_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers of a `304` for this entry (no representation headers)."""
        return [(name, value) for name, value in self.headers if name not in REPRESENTATION_HEADERS]


class GenerationFence:
    """The current generation of every kind, read from Redis once per turn of the loop.

    A caller always gets values read by a command sent *after* it asked (`TurnBatch`). A
    bump finishes before its writer's response is sent, so the read that serves the writer's
    client's next request includes it (Redis orders the bump before the read), while under
    load one round trip serves every request that came in with the same turn of the loop.
    """

    def __init__(self) -> None:
        self._script: AsyncScript | None = None
        self._client: Redis | None = None
        self._batch: TurnBatch[None, dict[str, str]] = TurnBatch(self._read)

    async def current(self, client: Redis) -> dict[str, str]:
        """Generations by kind, read after this call began."""
        self._client = client
        return await self._batch.call(None)

    async def _read(self, callers: list[None]) -> list[dict[str, str]]:
        assert self._client is not None
        if self._script is None:
            self._script = self._client.register_script(READ_GENERATIONS_SCRIPT)
        values = await self._script(keys=GENERATION_KEYS, client=self._client)
        generations = {kind: value.decode() for kind, value in zip(KINDS, values, strict=True)}
        return [generations] * len(callers)


class LocalEntries:
    """This process's copy of recently served entries, least recently used first out.

    Entries are keyed by generation, so a copy is exact for as long as it is kept: a bump
    makes it unreachable like its Redis original. A copy also expires like the original
    (`ttl` from when it was kept), which bounds how long data changed behind the cache's back
    (without a bump) can be served.
    """

    def __init__(
        self,
        *,
        ttl: float,
        max_entries: int = LOCAL_MAX_ENTRIES,
        max_bytes: int = LOCAL_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.size = 0
        self._entries: OrderedDict[str, tuple[float, Entry]] = OrderedDict()

    def get(self, key: str) -> Entry | None:
        """The entry of `key`, if kept and not expired."""
        found = self._entries.get(key)
        if found is None:
            return None
        expires, entry = found
        if self.clock() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry) -> None:
        """Keep `entry`, dropping the least recently used beyond the bounds."""
        self._drop(key)
        self._entries[key] = (self.clock() + self.ttl, entry)
        self.size += len(entry.body)
        while len(self._entries) > self.max_entries or self.size > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def clear(self) -> None:
        """Forget every copy."""
        self._entries.clear()
        self.size = 0

    def _drop(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self.size -= len(found[1].body)

    def __len__(self) -> int:
        return len(self._entries)


# Clients send a handful of distinct `Accept-Encoding` values: parse each once.
@functools.lru_cache(maxsize=1024)
def coding_variant(accept_encoding: tuple[bytes, ...], codings: tuple[str, ...]) -> str:
    """The content coding a client sending these `Accept-Encoding` values gets, of `codings`."""
    if not accept_encoding:
        return "none"
    accepted = parse_accept_encoding(accept_encoding)
    coding = choose_coding(accepted, codings) or "identity"
    return f"{coding}:{int(identity_refused(accepted))}"


# Hot reads repeat the same few URLs: hash each once.
@functools.lru_cache(maxsize=4096)
def entry_name(path: str, query: bytes, variant: str) -> str:
    """The key of an answer in its generation: path, raw query string and coding variant."""
    return "http:" + digest(path, query.decode("latin-1"), variant)


@dataclass
class ResponseCache:
    """ASGI middleware serving anonymous reads from Redis (see the module docstring)."""

    app: ASGIApp
    state: CacheState
    policy: SecurityPolicy
    redis_state: RedisState
    access_log: bool
    # Read by a layer in front (the rate limiter) for each request, when there is one.
    generations: RequestGenerations | None = None
    stats: ResponseStats = field(default_factory=ResponseStats)
    fence: GenerationFence = field(default_factory=lambda: GenerationFence())
    local: LocalEntries = field(init=False)
    inflight: dict[str, asyncio.Future[Entry | None]] = field(default_factory=dict)
    header_memo: dict[tuple[str | None, bool], list[tuple[bytes, bytes]]] = field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        self.local = LocalEntries(ttl=self.state.ttl_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer from the cache, or pass the request on and keep its answer."""
        kind = None
        if scope["type"] == "http" and scope.get("method") in METHODS:
            kind = route_kind(scope.get("path", ""))
        if kind is None:
            await self.app(scope, receive, send)
            return
        request = RequestHeaders(scope)
        client = self.redis_state.client
        if request.authorized or client is None or not self._usable():
            if not request.authorized:
                self.stats.bypassed += 1
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        variant = coding_variant(tuple(request.accept_encoding or ()), tuple(conditional.ENCODERS))
        key = entry_name(scope["path"], scope.get("query_string", b""), variant)
        # Read by the rate limiter's script for this request when the limiter is on: then an
        # entry kept in this process is answered without awaiting anything (or a timer).
        generations = self.generations.current() if self.generations is not None else None
        known_key = entry = None
        if generations is not None:
            known_key = cache_module.entry_key(kind, generations[kind], key)
            entry = self.local.get(known_key)
        if entry is None:
            try:
                async with asyncio.timeout(self.state.timeout):
                    full_key, entry = await self._lookup(client, kind, key, known_key)
            except (RedisError, OSError, TimeoutError) as exc:
                cache.note_failure(self.state, exc)
                await self.app(scope, receive, send)
                return
            self.state.timeouts_in_a_row = 0
            if entry is None:
                await self._miss(scope, receive, send, request, client, full_key, started)
                return
        await self._answer(scope, request, entry, send, started)

    async def _miss(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: RequestHeaders,
        client: Redis,
        full_key: str,
        started: float,
    ) -> None:
        """Wait for a load of the same entry already running, or run one and keep its answer."""
        self.stats.misses += 1
        running = self.inflight.get(full_key)
        if running is not None:
            entry = await asyncio.shield(running)
            if entry is not None:
                await self._answer(scope, request, entry, send, started)
                return
            await self.app(scope, receive, send)
            return
        # A load that finished while this request's look-up was under way kept its answer here.
        entry = self.local.get(full_key)
        if entry is not None:
            await self._answer(scope, request, entry, send, started)
            return
        future: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self.inflight[full_key] = future
        entry = None  # what the waiters get when the request fails
        try:
            entry = await self._pass_and_capture(scope, receive, send)
        finally:
            del self.inflight[full_key]
            future.set_result(entry)
        if entry is not None:
            self.local.put(full_key, entry)
            await self._store(client, full_key, entry)

    async def _lookup(
        self, client: Redis, kind: str, key: str, full_key: str | None
    ) -> tuple[str, Entry | None]:
        """The entry's full key, and the entry if this process or Redis has it.

        `full_key` is None when no layer in front read the generations: then the fence does,
        and this process's copies are looked at first; else they were already.
        """
        if full_key is None:
            generations = await self.fence.current(client)
            full_key = cache_module.entry_key(kind, generations[kind], key)
            entry = self.local.get(full_key)
            if entry is not None:
                return full_key, entry
        raw = await client.get(full_key)
        if not isinstance(raw, bytes):
            return full_key, None
        entry = Entry.load(raw)
        self.local.put(full_key, entry)
        return full_key, entry

    def _request_headers(self, origin: str | None, https: bool) -> list[tuple[bytes, bytes]]:
        """The security and CORS headers Flask would add for this origin and scheme."""
        key = (origin, https)
        headers = self.header_memo.get(key)
        if headers is None:
            extra = self.policy.base_headers(
                method="GET", origin=origin, authorized=False, https=https
            )
            headers = [
                (name.lower().encode(), value.encode("latin-1")) for name, value in extra.items()
            ]
            if len(self.header_memo) >= HEADER_MEMO_SIZE:
                self.header_memo.clear()  # any Origin may be sent: stay bounded
            self.header_memo[key] = headers
        return headers

    def _usable(self) -> bool:
        # A bump this process owes is made by the next cached read in Flask; until then the
        # entries of those kinds may be stale for everyone, so do not serve any.
        return self.state.enabled and not self.state.pending_bumps and self.state.breaker.allows()

    async def _pass_and_capture(self, scope: Scope, receive: Receive, send: Send) -> Entry | None:
        """Run the request through the app; the entry to store when its answer may be kept."""
        start: Message | None = None
        chunks: list[bytes] = []
        keep = False

        async def capture(message: Message) -> None:
            nonlocal start, keep
            if message["type"] == "http.response.start":
                start = message
                keep = message["status"] == 200 and storable(message.get("headers", ()))
            elif message["type"] == "http.response.body" and keep:
                chunks.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, capture)
        if start is None or not keep or scope["method"] != "GET":
            # A HEAD's body is dropped on the way out: nothing to store.
            return None
        body = b"".join(chunks)
        if len(body) > MAX_ENTRY_BYTES:
            return None
        headers = [
            (name.lower(), value)
            for name, value in start.get("headers", ())
            if name.lower() in STORED_HEADERS
        ]
        return Entry(headers, body)

    async def _store(self, client: Redis, full_key: str, entry: Entry) -> None:
        try:
            async with asyncio.timeout(self.state.timeout):
                await client.set(full_key, entry.dump(), ex=self.state.ttl_seconds)
        except (RedisError, OSError, TimeoutError) as exc:
            cache.note_failure(self.state, exc)
            return
        self.stats.stored += 1

    async def _answer(
        self, scope: Scope, request: RequestHeaders, entry: Entry, send: Send, started: float
    ) -> None:
        client = scope.get("client")
        peer = client[0] if client else None
        https = self.policy.proxies.is_https(
            scope.get("scheme", "http"), peer, request.forwarded_proto
        )
        request_id = request_id_from(request.request_id)
        etag = entry.etag
        if request.if_none_match and etag is not None and none_match(request.if_none_match, etag):
            self.stats.not_modified += 1
            status, body = 304, b""
            headers = [*entry.not_modified_headers]
        else:
            self.stats.hits += 1
            status, body = 200, entry.body
            headers = [*entry.full_headers]
        headers += self._request_headers(request.origin, https)
        headers.append((b"x-request-id", request_id.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
        if self.access_log:
            log_access(
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=(time.perf_counter() - started) * 1000,
                remote=peer,
                request_id=request_id,
            )
