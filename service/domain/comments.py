"""What the comment services return: a comment as one viewer sees it (rendered by schemas)."""

from __future__ import annotations

from dataclasses import dataclass

from service.models import Comment, User


@dataclass(frozen=True)
class CommentView:
    """A comment as one viewer sees it."""

    comment: Comment
    author: User
    following: bool
