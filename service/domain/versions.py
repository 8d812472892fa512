"""Versions of the resources that take conditional writes (`If-Match`).

A version is a digest of a resource's own state, as its representation shows it: the API
computes it from the JSON it sends, the services from the locked row, and the two agree. It
changes whenever a write changes what the resource shows (an article's `updatedAt` changes
with every edit, and its content is part of the digest too, so even two edits within one
millisecond get different versions). Counters and the viewer's own marks (`favoritesCount`,
`favorited`, `following`) are not part of it: they are not what a write of the resource
changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

ARTICLE = "article"
COMMENT = "comment"
USER = "user"
# Text in PostgreSQL cannot hold NUL, so it separates parts and marks null unambiguously.
_NULL = "\x00null"


def version_of(kind: str, parts: Iterable[str | int | None]) -> str:
    """The version of a `kind` resource whose state is `parts`: 20 hex digits."""
    digest = hashlib.sha256(kind.encode())
    for part in parts:
        digest.update(b"\x00" + (_NULL if part is None else str(part)).encode())
    return digest.hexdigest()[:20]


def article_version(
    *, slug: str, title: str, description: str, body: str, tags: Iterable[str], updated_at: str
) -> str:
    """The version of an article (`updated_at` as the API formats it)."""
    return version_of(ARTICLE, [slug, title, description, body, updated_at, *sorted(tags)])


def comment_version(*, comment_id: int, body: str, updated_at: str) -> str:
    """The version of a comment (`updated_at` as the API formats it)."""
    return version_of(COMMENT, [comment_id, body, updated_at])


def user_version(*, email: str, username: str, bio: str | None, image: str | None) -> str:
    """The version of a user's own profile (what `GET /user` shows but the token); the API
    shows an absent bio or image as an empty string, and so does the version."""
    return version_of(USER, [email, username, bio or "", image or ""])


def version_of_json(kind: str, document: Mapping[str, Any]) -> str | None:
    """The version of the resource in a response body (`{"article": {...}}`), or None when
    the body does not hold one."""
    item = document.get(kind)
    if not isinstance(item, Mapping):
        return None
    try:
        if kind == ARTICLE:
            return article_version(
                slug=item["slug"],
                title=item["title"],
                description=item["description"],
                body=item["body"],
                tags=item["tagList"],
                updated_at=item["updatedAt"],
            )
        if kind == COMMENT:
            return comment_version(
                comment_id=item["id"], body=item["body"], updated_at=item["updatedAt"]
            )
        if kind == USER:
            return user_version(
                email=item["email"],
                username=item["username"],
                bio=item.get("bio"),
                image=item.get("image"),
            )
    except (KeyError, TypeError):
        return None
    raise ValueError(f"unknown kind {kind!r}")
