"""`Idempotency-Key` on the non-idempotent writes: `@idempotent` under `@operation(...)`.

A request without the header runs as before, at the cost of one header look-up. With it, the
key is claimed in the request's transaction, and the answer is either replayed (marked
`Idempotent-Replayed: true`) or produced by the view and stored before the request's single
commit (the rules: `service.services.idempotency`).

Keys are scoped by principal: `user:<id>` for a signed-in caller (whatever client or token
acts for them), `anon:<client address>` for anonymous writes (register, password reset). The
address is the one the rate limiter uses (`TRUSTED_PROXIES` respected): an anonymous key can
only be replayed from where it was used, and the body (part of the fingerprint) must match too.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import orjson
from flask import Response, current_app, request

from service.api.hardening import HARDENING
from service.api.jsonprovider import loads_body
from service.infra.db import db
from service.infra.extensions import SETTINGS
from service.models import User
from service.services import idempotency

REPLAYED = "Idempotent-Replayed"
# Recomputed for every answer; the rest of the view's headers are replayed as they were.
_NOT_STORED = frozenset({"content-length"})

V = TypeVar("V", bound=Callable[..., Coroutine[Any, Any, Any]])


def principal_of(viewer: User | None) -> str:
    """Whose keys the request's key is among."""
    if viewer is not None:
        return f"user:{viewer.id}"
    address = HARDENING.get().proxies.client_ip(
        request.remote_addr, request.headers.getlist("X-Forwarded-For")
    )
    return f"anon:{address}"


def fingerprint() -> str:
    """HMAC (keyed by SECRET_KEY: bodies may hold passwords) of the request's method, path,
    query and body; JSON bodies canonically, so formatting does not count."""
    data = request.get_data(cache=True)
    try:
        body = orjson.dumps(loads_body(data), option=orjson.OPT_SORT_KEYS) if data else b""
    except orjson.JSONDecodeError:
        body = data
    mac = hmac.new(current_app.config["SECRET_KEY"].encode(), digestmod=hashlib.sha256)
    for part in (request.method.encode(), request.path.encode(), request.query_string, body):
        mac.update(len(part).to_bytes(8, "big") + part)
    return mac.hexdigest()


def idempotent(view: V) -> V:
    """Make `view` honour `Idempotency-Key` (put it right under `@operation`)."""

    @functools.wraps(view)
    async def run(*args: Any, **kwargs: Any) -> Any:
        value = request.headers.get(idempotency.HEADER)
        if value is None:
            return await view(*args, **kwargs)
        key = idempotency.parse_key(value)
        principal = principal_of(kwargs.get("viewer"))
        settings = SETTINGS.get()
        box = settings.webhook_secret_box
        request_print = fingerprint()
        stored = await idempotency.claim(
            session=db.session,
            principal=principal,
            key=key,
            fingerprint=request_print,
            retention=idempotency.retention_of(settings),
        )
        if stored is not None:
            replay = Response(box.open(stored.body), status=stored.status, headers=stored.headers)
            replay.headers[REPLAYED] = "true"
            return replay
        response = current_app.make_response(await view(*args, **kwargs))
        if response.status_code < 400:
            answer = idempotency.StoredAnswer(
                status=response.status_code,
                headers=[(k, v) for k, v in response.headers if k.lower() not in _NOT_STORED],
                body=box.seal(response.get_data(as_text=True)),
            )
            await idempotency.record(
                session=db.session,
                principal=principal,
                key=key,
                method=request.method,
                path=request.path,
                fingerprint=request_print,
                answer=answer,
            )
        return response

    run.conduit_idempotent = True  # type: ignore[attr-defined]
    return run  # type: ignore[return-value]
