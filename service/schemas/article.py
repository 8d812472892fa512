"""Articles, tags and their request/response bodies."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from service.domain.articles import ArticleSort, ArticleView
from service.models.article import DESCRIPTION_MAX, TAG_MAX, TITLE_MAX
from service.schemas.common import (
    NOT_BLANK_PATTERN,
    InModel,
    OutModel,
    PageQuery,
    SchemaExtra,
    Timestamp,
    no_nul,
    not_blank,
    optional,
    trimmed,
)
from service.schemas.profile import PROFILE_EXAMPLE, ProfileOut

BODY_MAX = 100_000
SEARCH_MAX = 200
TAGS_MAX = 20


def reject_null(value: Any) -> Any:
    """For partial updates: a field may be absent, but not explicitly null."""
    if value is None:
        raise PydanticCustomError("null", "can't be null")
    return value


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


# Each text field is checked as sent: its length (what JSON Schema's maxLength counts) and that
# it has a character other than whitespace (the `pattern`, so the document says so too).
# Titles, descriptions and tags are then stored without surrounding whitespace.
_TRIMMED = "Not only whitespace; stored without surrounding whitespace"
_VERBATIM = "Not only whitespace; stored as sent (markdown)"
Title = Annotated[
    str,
    StringConstraints(min_length=1, max_length=TITLE_MAX),
    AfterValidator(not_blank),
    AfterValidator(no_nul),
    AfterValidator(trimmed),
    SchemaExtra(pattern=NOT_BLANK_PATTERN, description=_TRIMMED),
]
Description = Annotated[
    str,
    StringConstraints(min_length=1, max_length=DESCRIPTION_MAX),
    AfterValidator(not_blank),
    AfterValidator(no_nul),
    AfterValidator(trimmed),
    SchemaExtra(pattern=NOT_BLANK_PATTERN, description=_TRIMMED),
]
# Markdown: leading indentation is meaningful, so the body is stored verbatim.
Body = Annotated[
    str,
    StringConstraints(min_length=1, max_length=BODY_MAX),
    AfterValidator(not_blank),
    AfterValidator(no_nul),
    SchemaExtra(pattern=NOT_BLANK_PATTERN, description=_VERBATIM),
]
TagName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=TAG_MAX),
    AfterValidator(not_blank),
    AfterValidator(no_nul),
    AfterValidator(trimmed),
    SchemaExtra(pattern=NOT_BLANK_PATTERN, description=_TRIMMED),
]
QueryText = Annotated[str, AfterValidator(no_nul)]
# Tags keep their case; exact duplicates (after trimming) collapse into one.
TagList = Annotated[list[TagName], Field(max_length=TAGS_MAX), AfterValidator(_unique)]


def sort_tags(names: list[str]) -> list[str]:
    """Alphabetical regardless of case, ties by code point: the one order tags are shown in."""
    return sorted(names, key=lambda name: (name.casefold(), name))


class ArticleCreate(InModel):
    """A new article."""

    title: Title = Field(examples=["How to train your dragon"])
    description: Description = Field(examples=["Ever wonder how?"])
    body: Body = Field(examples=["You have to believe"])
    tag_list: TagList = Field(
        default_factory=list, alias="tagList", examples=[["dragons", "training"]]
    )


class ArticleUpdate(InModel):
    """Fields to change; absent fields stay as they are. The slug never changes."""

    title: Title | None = optional(examples=["Did you train your dragon?"])
    description: Description | None = optional()
    body: Body | None = optional(examples=["With two hands"])
    tag_list: TagList | None = optional(alias="tagList")

    @field_validator("title", "description", "body", "tag_list", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        return reject_null(value)


class ArticleCreateRequest(InModel):
    """`{"article": {...}}` to create an article."""

    article: ArticleCreate


class ArticleUpdateRequest(InModel):
    """`{"article": {...}}` to update an article."""

    article: ArticleUpdate


class ArticleListQuery(PageQuery):
    """Filters of `GET /articles`; they combine, and an empty value means no filter."""

    tag: QueryText | None = optional(description="Only articles with this tag (exact match)")
    author: QueryText | None = optional(description="Only articles by this username (any case)")
    favorited: QueryText | None = optional(
        description="Only articles favorited by this username (any case)"
    )
    q: QueryText | None = optional(
        max_length=SEARCH_MAX,
        description=(
            "Full-text search in title, description and body (PostgreSQL `websearch_to_tsquery`"
            ' syntax: words, "quoted phrases", `or`, `-word`); `sort=-relevance` ranks the '
            "matches"
        ),
    )
    sort: ArticleSort | None = optional(
        description=(
            "Order: `createdAt`, `updatedAt` or `favoritesCount`, with `-` for descending, or "
            "`-relevance` (most relevant first: only with `q`, over at most 2000 matches). "
            "Default: `-createdAt` (newest first)"
        )
    )

    # Not `sort`: its documented values are an enum, and an empty one is not among them.
    @field_validator("tag", "author", "favorited", "q", mode="before")
    @classmethod
    def _empty_is_absent(cls, value: Any) -> Any:
        return value or None


class ArticleSummary(OutModel):
    """An article in a list: everything but the body."""

    slug: str = Field(examples=["how-to-train-your-dragon"])
    title: str = Field(examples=["How to train your dragon"])
    description: str = Field(examples=["Ever wonder how?"])
    tag_list: list[str] = Field(alias="tagList", examples=[["dragons", "training"]])
    created_at: Timestamp = Field(alias="createdAt")
    updated_at: Timestamp = Field(alias="updatedAt")
    favorited: bool = Field(examples=[False])
    favorites_count: int = Field(alias="favoritesCount", examples=[0])
    author: ProfileOut

    @classmethod
    def of(cls, view: ArticleView) -> ArticleSummary:
        """The list entry of `view`."""
        return cls(**_common_fields(view))


class ArticleOut(ArticleSummary):
    """A whole article; `favorited` and `author.following` are relative to the caller."""

    body: str = Field(examples=["You have to believe"])

    @classmethod
    def of(cls, view: ArticleView) -> ArticleOut:
        """The full article of `view`."""
        return cls(**_common_fields(view), body=view.article.body)


def _common_fields(view: ArticleView) -> dict[str, Any]:
    article = view.article
    return {
        "slug": article.slug,
        "title": article.title,
        "description": article.description,
        "tag_list": sort_tags(view.tags),
        "created_at": article.created_at,
        "updated_at": article.updated_at,
        "favorited": view.favorited,
        "favorites_count": view.favorites_count,
        "author": ProfileOut.of(view.author, following=view.following),
    }


class ArticleResponse(OutModel):
    """`{"article": {...}}`."""

    article: ArticleOut


class MultipleArticlesResponse(OutModel):
    """`{"articles": [...], "articlesCount": n}`; the count covers every page."""

    articles: list[ArticleSummary]
    articles_count: int = Field(alias="articlesCount", examples=[1])


class TagsResponse(OutModel):
    """`{"tags": [...]}`."""

    tags: list[str] = Field(examples=[["dragons", "training"]])


# OpenAPI examples of the models above; the views attach them to their operations.
ARTICLE_SUMMARY_EXAMPLE: dict[str, Any] = {
    "slug": "how-to-train-your-dragon",
    "title": "How to train your dragon",
    "description": "Ever wonder how?",
    "tagList": ["dragons", "training"],
    "createdAt": "2026-01-02T03:04:05.678Z",
    "updatedAt": "2026-01-02T03:04:05.678Z",
    "favorited": False,
    "favoritesCount": 0,
    "author": PROFILE_EXAMPLE,
}
ARTICLE_RESPONSE_EXAMPLE: dict[str, Any] = {
    "article": {**ARTICLE_SUMMARY_EXAMPLE, "body": "You have to believe"}
}
FAVORITED_RESPONSE_EXAMPLE: dict[str, Any] = {
    "article": {
        **ARTICLE_SUMMARY_EXAMPLE,
        "body": "You have to believe",
        "favorited": True,
        "favoritesCount": 1,
    }
}
ARTICLES_RESPONSE_EXAMPLE: dict[str, Any] = {
    "articles": [ARTICLE_SUMMARY_EXAMPLE],
    "articlesCount": 1,
}
ARTICLE_CREATE_EXAMPLE: dict[str, Any] = {
    "article": {
        "title": "How to train your dragon",
        "description": "Ever wonder how?",
        "body": "You have to believe",
        "tagList": ["dragons", "training"],
    }
}
ARTICLE_UPDATE_EXAMPLE: dict[str, Any] = {"article": {"body": "With two hands"}}
TAGS_RESPONSE_EXAMPLE: dict[str, Any] = {"tags": ["dragons", "training"]}
