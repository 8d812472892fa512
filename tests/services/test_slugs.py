"""Slug generation (pure functions, no database)."""

from __future__ import annotations

import re

import pytest

from service.services.slugs import (
    FALLBACK,
    NUMBERED_TRIES,
    RANDOM_TRIES,
    SLUG_MAX,
    candidates,
    slugify,
)


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        ("How to train your dragon", "how-to-train-your-dragon"),
        ("  Leading and trailing  ", "leading-and-trailing"),
        ("Ça va? 日本語!", "ça-va-日本語"),
        ("Ünïcödé   Wörds", "ünïcödé-wörds"),
        ("हिन्दी भाषा", "हिन्दी-भाषा"),  # vowel signs (combining marks) are kept
        # NFKC folds compatibility forms (here fullwidth letters and digits).
        ("\uff26\uff55\uff4c\uff4c \uff11\uff12\uff13", "full-123"),
        ("snake_case and--dashes", "snake-case-and-dashes"),
        ("Robert'); DROP TABLE articles;--", "robert-drop-table-articles"),
        ("a/b\\c?d#e%f", "a-b-c-d-e-f"),
        ("Emoji 🐉 only between", "emoji-only-between"),
        ("2026: a year", "2026-a-year"),
    ],
)
def test_slugify(title: str, slug: str) -> None:
    assert slugify(title) == slug


@pytest.mark.parametrize("title", ["", "   ", "?!?", "🐉🐉", "---", "\x00\t\n"])
def test_slugify_falls_back_when_nothing_is_left(title: str) -> None:
    assert slugify(title) == FALLBACK


def test_slugify_is_at_most_200_characters_and_never_ends_with_a_dash() -> None:
    assert slugify("a" * 500) == "a" * SLUG_MAX
    assert slugify("a" * 199 + " b") == "a" * 199
    # NFKC can expand one character into many; the cut happens after normalising.
    expanded = slugify("\ufdfa" * 200)
    assert len(expanded) <= SLUG_MAX
    assert not expanded.endswith("-")


def test_slug_never_contains_a_slash_or_whitespace() -> None:
    slug = slugify("a / b \u2028 c \u00a0 d")
    assert slug == "a-b-c-d"


def test_candidates_number_then_randomise() -> None:
    tried = list(candidates("dragon"))
    numbered = ["dragon"] + [f"dragon-{n}" for n in range(2, NUMBERED_TRIES + 2)]
    assert tried[: len(numbered)] == numbered
    randoms = tried[len(numbered) :]
    assert len(randoms) == RANDOM_TRIES
    assert all(re.fullmatch(r"dragon-[0-9a-f]{8}", slug) for slug in randoms)
    assert len(set(randoms)) == RANDOM_TRIES


def test_candidates_skip_reserved_route_names() -> None:
    assert next(candidates("feed")) == "feed-2"
    assert next(candidates("feeds")) == "feeds"


def test_candidates_fit_the_column() -> None:
    assert max(len(slug) for slug in candidates("a" * SLUG_MAX)) <= 255
