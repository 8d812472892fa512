"""URL converters of the v1 routes, each carrying the OpenAPI schema of the values it matches.

`service.api.spec` documents a path parameter with its converter's `openapi_schema`, so the
document and the router cannot disagree about which paths an operation answers.
"""

from __future__ import annotations

from typing import Any, ClassVar

from werkzeug.routing import BaseConverter, IntegerConverter

from service.services.slugs import RESERVED

# Words that are routes of their own under /articles/ ("feed"): no slug is ever one of them,
# and the slug routes must not match them either, or OPTIONS /articles/feed would advertise
# PUT and DELETE. They are plain lower-case words, the same regex in Python and ECMAScript.
_RESERVED = "|".join(sorted(RESERVED))


class SlugConverter(BaseConverter):
    """One path segment other than a reserved word ("feed")."""

    # `\Z` is Python's end of text (`$` also matches before a trailing newline); the schema's
    # ECMAScript `$` means the same as `\Z`.
    regex = rf"(?!(?:{_RESERVED})\Z)[^/]+"
    # The regex contains "/" (in `[^/]`), which makes werkzeug assume it may span segments and
    # match it against the rest of the path; it never does, so match it against one segment.
    part_isolating = True
    openapi_schema: ClassVar[dict[str, Any]] = {
        "type": "string",
        "pattern": rf"^(?!(?:{_RESERVED})$)[^/]+$",
        "description": "The article's slug",
        "example": "how-to-train-your-dragon",
    }


class IdConverter(IntegerConverter):
    """A non-negative integer written with ASCII digits only."""

    # werkzeug's `int` converter uses `\d+`, which also matches other scripts' digits.
    regex = r"[0-9]+"
    part_isolating = True
    openapi_schema: ClassVar[dict[str, Any]] = {"type": "integer", "minimum": 0, "example": 1}


CONVERTERS: dict[str, type[BaseConverter]] = {"slug": SlugConverter, "id": IdConverter}
