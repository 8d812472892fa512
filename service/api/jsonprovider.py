"""Flask JSON provider backed by orjson (faster dumps/loads, native datetime and UUID)."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from flask.json.provider import JSONProvider

from service.domain.errors import DomainError

# Far beyond any body of this API (an article is 3 levels deep), far below what breaks:
# Pydantic's error rendering and orjson's serialiser stop at 254 levels.
MAX_DEPTH = 64


class NestedTooDeep(DomainError):
    """A request body nested deeper than `MAX_DEPTH` (400 in the error envelope)."""


def loads_body(data: bytes) -> Any:
    """Parse a request body (orjson.JSONDecodeError when malformed), refusing deep nesting."""
    value = orjson.loads(data)
    # Nesting needs a bracket per level: a body with few brackets needs no walk.
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise NestedTooDeep(f"JSON nested deeper than {MAX_DEPTH} levels")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    # Iterative: the point is to survive nesting that recursion would not.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


class OrjsonProvider(JSONProvider):
    """Serialise with orjson; datetimes come out in ISO 8601 with their zone."""

    mimetype = "application/json"

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """Serialise `obj` to a str."""
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse JSON text."""
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """Build a JSON response without going through `str`."""
        obj = self._prepare_response_obj(args, kwargs)
        return Response(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS), mimetype=self.mimetype)
