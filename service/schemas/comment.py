"""Comments on articles and their request/response bodies."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints

from service.domain.comments import CommentView
from service.schemas.common import (
    NOT_BLANK_PATTERN,
    InModel,
    OutModel,
    SchemaExtra,
    Timestamp,
    no_nul,
    not_blank,
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
