"""Comments on articles and their request/response bodies."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from service.domain.comments import CommentView
from service.schemas.common import (
    DEFAULT_LIMIT,
    NOT_BLANK_PATTERN,
    InModel,
    OutModel,
    PageQuery,
    QueryInt,
    SchemaExtra,
    Timestamp,
    cursor_field,
    no_nul,
    not_blank,
    offset_field,
    optional,
)
from service.schemas.profile import PROFILE_EXAMPLE, ProfileOut

COMMENT_MAX = 10_000

# Stored verbatim (markdown), but it must say something.
CommentBody = Annotated[
    str,
    StringConstraints(min_length=1, max_length=COMMENT_MAX),
    AfterValidator(not_blank),
    AfterValidator(no_nul),
    SchemaExtra(pattern=NOT_BLANK_PATTERN, description="Not only whitespace; stored as sent"),
]


class CommentListQuery(BaseModel):
    """Every comment by default, as RealWorld has it; pages with `limit`, `offset` or `cursor`."""

    model_config = ConfigDict(extra="ignore")

    limit: QueryInt | None = optional(
        ge=1,
        le=100,
        description=(
            "How many comments to return; absent: every comment (or 20 with `offset` or `cursor`)"
        ),
    )
    offset: QueryInt = offset_field()
    cursor: str | None = cursor_field()

    def page_query(self) -> PageQuery | None:
        """The page asked for, or None for every comment."""
        if self.limit is None and self.cursor is None and not self.offset:
            return None
        return PageQuery.model_construct(
            limit=self.limit or DEFAULT_LIMIT, offset=self.offset, cursor=self.cursor
        )


class CommentCreate(InModel):
    """A new comment."""

    body: CommentBody = Field(examples=["His name was my name too."])


class CommentCreateRequest(InModel):
    """`{"comment": {...}}` to add a comment."""

    comment: CommentCreate


class CommentOut(OutModel):
    """A comment; `author.following` is relative to the caller."""

    id: int = Field(examples=[1])
    created_at: Timestamp = Field(alias="createdAt")
    updated_at: Timestamp = Field(alias="updatedAt")
    body: str = Field(examples=["His name was my name too."])
    author: ProfileOut

    @classmethod
    def of(cls, view: CommentView) -> CommentOut:
        """The comment of `view`."""
        comment = view.comment
        return cls(
            id=comment.id,
            created_at=comment.created_at,
            updated_at=comment.updated_at,
            body=comment.body,
            author=ProfileOut.of(view.author, following=view.following),
        )


class CommentResponse(OutModel):
    """`{"comment": {...}}`."""

    comment: CommentOut


class MultipleCommentsResponse(OutModel):
    """`{"comments": [...]}`, oldest first."""

    comments: list[CommentOut]


# OpenAPI examples of the models above; the views attach them to their operations.
COMMENT_EXAMPLE: dict[str, Any] = {
    "id": 1,
    "createdAt": "2026-01-02T03:04:05.678Z",
    "updatedAt": "2026-01-02T03:04:05.678Z",
    "body": "It takes a Jacobian",
    "author": PROFILE_EXAMPLE,
}
COMMENT_RESPONSE_EXAMPLE: dict[str, Any] = {"comment": COMMENT_EXAMPLE}
COMMENTS_RESPONSE_EXAMPLE: dict[str, Any] = {"comments": [COMMENT_EXAMPLE]}
COMMENT_CREATE_EXAMPLE: dict[str, Any] = {"comment": {"body": "It takes a Jacobian"}}
