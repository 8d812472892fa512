"""Conditional writes: a strong `ETag` on articles, comments and the current user, and
`If-Match` on their `PUT`/`PATCH`/`DELETE` (`@conditional(kind)` under `@operation(...)`).

The tag is `"<version>.<digest>"`: the resource's version (`service.domain.versions`: its own
state) and a digest of the body. The digest makes the tag strong (it changes with every byte
of the representation, so `If-None-Match` stays exact even when only `favoritesCount`
changed); `If-Match` is evaluated on the version: a tag matches while the resource has not
been written since it was read. Compressed answers carry the tag with the coding appended
(`"<version>.<digest>-br"`), still strong and still matching.

The comparison runs under the row lock the write takes anyway (`service.services.
preconditions`), so two writers holding the same tag cannot both win. Requests without
`If-Match` cost one header look-up, unless `PRECONDITION_REQUIRED` asks for 428 then.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import orjson
from flask import Response, current_app, request

from service.domain import versions
from service.domain.errors import PreconditionRequired
from service.infra.db import db
from service.infra.extensions import SETTINGS
from service.models import User
from service.services import preconditions

WRITES = frozenset({"PUT", "PATCH", "DELETE"})
REQUIRED = "send If-Match with the ETag of the version you are changing (read it first)"
# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; only strong tags take part in If-Match.
_ENTITY_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e]*)"\s*(?:,|$)')

V = TypeVar("V", bound=Callable[..., Coroutine[Any, Any, Any]])
Locker = Callable[[User, dict[str, Any]], Awaitable[str | None]]


def _lock_article(viewer: User, path: dict[str, Any]) -> Awaitable[str | None]:
    return preconditions.lock_article(
        session=db.session, viewer=viewer, slug=path["slug"], deleting=request.method == "DELETE"
    )


def _lock_comment(viewer: User, path: dict[str, Any]) -> Awaitable[str | None]:
    return preconditions.lock_comment(
        session=db.session, viewer=viewer, slug=path["slug"], comment_id=path["comment_id"]
    )


def _lock_user(viewer: User, path: dict[str, Any]) -> Awaitable[str | None]:
    return preconditions.lock_user(session=db.session, viewer=viewer)


LOCKERS: dict[str, Locker] = {
    versions.ARTICLE: _lock_article,
    versions.COMMENT: _lock_comment,
    versions.USER: _lock_user,
}


def make_etag(version: str, body: bytes) -> str:
    """The strong entity tag of a representation `body` of a resource at `version`."""
    return f'"{version}.{hashlib.sha256(body).hexdigest()[:16]}"'


def expected_versions(value: str) -> list[str]:
    """The versions an `If-Match` field value accepts: `*`, or those of its strong tags (weak
    ones never match, RFC 9110 §13.1.1); a malformed value accepts none."""
    if value.strip() == "*":
        return ["*"]
    found: list[str] = []
    position = 0
    while position < len(value):
        match = _ENTITY_TAG.match(value, position)
        if match is None or match.end() == position:
            return []
        if match.group(1) is None:
            found.append(match.group(2).partition(".")[0])
        position = match.end()
    return found


def conditional(kind: str) -> Callable[[V], V]:
    """Tag `kind` answers with an `ETag`; check `If-Match` before a write of one."""
    return _decorator(kind, LOCKERS[kind])


def tagged(kind: str) -> Callable[[V], V]:
    """Tag `kind` answers with an `ETag` (reads, and writes that take no `If-Match`)."""
    return _decorator(kind, None)


def _decorator(kind: str, lock: Locker | None) -> Callable[[V], V]:
    def decorate(view: V) -> V:
        @functools.wraps(view)
        async def run(*args: Any, **kwargs: Any) -> Any:
            if lock is not None and request.method in WRITES:
                value = request.headers.get("If-Match")
                if value is not None:
                    current = await lock(kwargs["viewer"], kwargs)
                    preconditions.check(current=current, expected=expected_versions(value))
                elif SETTINGS.get().precondition_required:
                    raise PreconditionRequired(REQUIRED, field="If-Match")
            response = current_app.make_response(await view(*args, **kwargs))
            if response.status_code == 200 or response.status_code == 201:
                tag(response, kind)
            return response

        # Read by `operation(...)` to document the headers and statuses.
        run.conduit_conditional = "read" if lock is None else "write"  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return decorate


def tag(response: Response, kind: str) -> None:
    """Set the strong `ETag` of a `kind` answer from its body."""
    body = response.get_data()
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    version = versions.version_of_json(kind, document) if isinstance(document, dict) else None
    if version is not None:
        response.headers["ETag"] = make_etag(version, body)
