"""Readable, unicode-aware URL slugs for article titles.

A slug keeps letters, digits and combining marks of any script (so "Ça va? 日本語" becomes
"ça-va-日本語"), lower-cases them after NFKC normalisation, and joins the words with "-".
Uniqueness is not decided here: the caller inserts and lets the `uq_articles_slug` constraint
reject a taken slug, then asks `candidates` for the next one to try.
"""

from __future__ import annotations

import secrets
import unicodedata
from collections.abc import Iterator

SLUG_MAX = 200
FALLBACK = "article"
# Words that are routes under /articles/: an article slugged "feed" could never be read.
RESERVED = frozenset({"feed"})
# Numbered suffixes are friendly; past these, a random one ends contention quickly.
NUMBERED_TRIES = 5
RANDOM_TRIES = 10
# Letters, marks (accents, vowel signs of Indic scripts) and numbers are kept.
_KEPT_CATEGORIES = frozenset({"L", "M", "N"})


def slugify(title: str) -> str:
    """The base slug of `title`: NFKC, lower-case, non-word runs -> "-", at most 200 chars."""
    text = unicodedata.normalize("NFKC", title).lower()
    words: list[str] = []
    current: list[str] = []
    for char in text:
        if unicodedata.category(char)[0] in _KEPT_CATEGORIES:
            current.append(char)
        elif current:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    slug = "-".join(words)[:SLUG_MAX].rstrip("-")
    return slug or FALLBACK


def candidates(base: str) -> Iterator[str]:
    """Slugs to try in order: `base` (unless reserved), `base-2`..., then random suffixes."""
    if base not in RESERVED:
        yield base
    for n in range(2, NUMBERED_TRIES + 2):
        yield f"{base}-{n}"
    for _ in range(RANDOM_TRIES):
        yield f"{base}-{secrets.token_hex(4)}"
