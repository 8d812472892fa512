"""What a transaction changed, for the response cache: services note it, the request bumps
the cache generations of those kinds after the commit (`service.cache`)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

# Cached kinds; each has a generation counter that every change of that kind increments.
ARTICLES = "articles"  # article lists and single articles (shared fields, not the viewer's)
TAGS = "tags"
COMMENTS = "comments"
PROFILES = "profiles"
KINDS = (ARTICLES, TAGS, COMMENTS, PROFILES)

CHANGED_KEY = "conduit.cache_changed"


def note_changed(session: AsyncSession, *kinds: str) -> None:
    """Remember that this transaction changes cached data of `kinds`."""
    noted: set[str] = session.info.setdefault(CHANGED_KEY, set())
    noted.update(kinds)


def take_changed(session: AsyncSession) -> set[str]:
    """The kinds this transaction changed; forgets them."""
    noted: set[str] = session.info.pop(CHANGED_KEY, set())
    return noted
