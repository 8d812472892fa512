"""How `GET /articles` sorts and searches: its keyset orderings and the full-text match.

Search uses PostgreSQL full-text search over title, description and body, in the text search
configuration SEARCH_LANGUAGE. The document expression is written out as a literal, the
language included, because only a statement whose expression equals the GIN index's
(migration 0007) can use it; the query text is a bound parameter (`websearch_to_tsquery`: words,
"quoted phrases", `or`, `-word`).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import ColumnElement, Float, String, bindparam, cast, func, literal_column

from service.domain.articles import NEWEST, RELEVANCE, ArticleSort
from service.domain.errors import InvalidInput
from service.models import Article
from service.services.keyset import Ordering

_LANGUAGE = re.compile(r"[a-z_]{1,63}")


def _ordering(column: Any, *, descending: bool) -> Ordering:
    return Ordering(keys=(column, Article.id), descending=descending)


ORDERINGS: dict[str, Ordering] = {
    "createdAt": _ordering(Article.created_at, descending=False),
    "-createdAt": _ordering(Article.created_at, descending=True),
    "updatedAt": _ordering(Article.updated_at, descending=False),
    "-updatedAt": _ordering(Article.updated_at, descending=True),
    "favoritesCount": _ordering(Article.favorites_count, descending=False),
    "-favoritesCount": _ordering(Article.favorites_count, descending=True),
}


# Ranking computes a score per match from its text (the index only finds the matches): about
# 0.2 ms each on the 100k-article seed, so a search matching more is refused ranking (422).
RANK_MAX = 2000


def sort_name(sort: ArticleSort | None) -> ArticleSort:
    """The order a list is in: the one asked for, else newest first."""
    return NEWEST if sort is None else sort


def _document(language: str) -> ColumnElement[Any]:
    if not _LANGUAGE.fullmatch(language):
        raise ValueError(f"not a text search configuration name: {language!r}")
    return literal_column(
        f"to_tsvector('{language}'::regconfig, "
        "(articles.title::text || ' ' || articles.description::text || ' ' || articles.body))"
    )


# The search text: a bound parameter named "q", so that statements are built once.
SEARCH = bindparam("q", type_=String)


def _query(language: str) -> ColumnElement[Any]:
    return func.websearch_to_tsquery(literal_column(f"'{language}'::regconfig"), SEARCH)


def matches(language: str) -> ColumnElement[bool]:
    """Articles whose title, description or body match the search (parameter "q")."""
    return _document(language).bool_op("@@")(_query(language))


def ordering(name: ArticleSort, *, searched: bool, language: str) -> Ordering:
    """The keyset ordering called `name` (`sort_name`); `InvalidInput` for relevance without
    a search (relevance ranks by the parameter "q")."""
    if name != RELEVANCE:
        return ORDERINGS[name]
    if not searched:
        raise InvalidInput("sorting by relevance needs a search (q)", field="sort")
    # ts_rank_cd: how many of the query's terms occur and how close together, divided by
    # 1 + log(document length) (flag 1) so long bodies do not win by size alone. Cast to
    # double so that a cursor's value compares exactly.
    rank = cast(func.ts_rank_cd(_document(language), _query(language), 1), Float(precision=53))
    return Ordering(keys=(rank, Article.id), descending=True, per_row=True)


def check_rankable(total: int) -> None:
    """`InvalidInput` when `total` matches are too many to rank (more than RANK_MAX, read
    now: statements are built once and kept)."""
    if total > RANK_MAX:
        raise InvalidInput(
            f"{total} matches are too many to rank (at most {RANK_MAX}): "
            "narrow the search, or sort by a field",
            field="sort",
        )
