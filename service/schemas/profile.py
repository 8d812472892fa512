"""Profiles as other users see them."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from service.models import User
from service.schemas.common import OutModel


class ProfileOut(OutModel):
    """A user's public profile; `following` is relative to the caller (false when anonymous)."""

    username: str = Field(examples=["jake"])
    bio: str = Field(examples=["I work at statefarm"])
    image: str = Field(examples=["https://api.realworld.io/images/smiley-cyrus.jpg"])
    following: bool = Field(examples=[False])

    @classmethod
    def of(cls, user: User, *, following: bool) -> ProfileOut:
        """The profile of `user`; absent bio and image are empty strings, as the spec types them."""
        return cls(
            username=user.username, bio=user.bio or "", image=user.image or "", following=following
        )


class ProfileResponse(OutModel):
    """`{"profile": {...}}`."""

    profile: ProfileOut


# OpenAPI examples of the models above; the views attach them to their operations.
PROFILE_EXAMPLE: dict[str, Any] = {
    "username": "jake",
    "bio": "I work at statefarm",
    "image": "https://api.realworld.io/images/smiley-cyrus.jpg",
    "following": False,
}
PROFILE_RESPONSE_EXAMPLE: dict[str, Any] = {"profile": PROFILE_EXAMPLE}
FOLLOWING_RESPONSE_EXAMPLE: dict[str, Any] = {"profile": {**PROFILE_EXAMPLE, "following": True}}
