"""What the article services return: an article as one viewer sees it (pages of them: Page).

Here, below schemas and services, so that services build them and schemas render them without
either importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from service.models import Article, User


@dataclass(frozen=True)
class ArticleView:
    """An article as one viewer sees it."""

    article: Article
    author: User
    tags: list[str]
    favorited: bool
    favorites_count: int
    following: bool


# `sort=` of `GET /articles`: a field, `-` first for descending; newest first by default.
# RELEVANCE (most relevant first) ranks the matches of a search (`q=`).
ArticleSort = Literal[
    "createdAt",
    "-createdAt",
    "updatedAt",
    "-updatedAt",
    "favoritesCount",
    "-favoritesCount",
    "-relevance",
]
ARTICLE_SORTS: tuple[ArticleSort, ...] = get_args(ArticleSort)
NEWEST: ArticleSort = "-createdAt"
RELEVANCE: ArticleSort = "-relevance"
