"""The webhook event catalogue: each type's meaning, the shape of its `data`, and builders.

Services call `outbox.emit(event_type=..., data=<builder>(...))` with the builders below, so
every payload of a type has the one documented shape (validated by its model when built). The
shapes follow the RealWorld API's, without the fields that depend on who is looking
(`favorited`, `following`): a payload is the same for every endpoint that receives it.
Timestamps are formatted like the API's (UTC, milliseconds, `Z`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.domain import events
from service.domain.articles import ArticleView
from service.domain.events import EventType
from service.models import Article, Comment, User
from service.schemas.common import Timestamp

_EXAMPLE_TIME = "2026-01-02T03:04:05.678Z"


class EventData(BaseModel):
    """Base of the payload models: camelCase on the wire, no extra fields."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True, extra="forbid")

    def to_data(self) -> dict[str, Any]:
        """The JSON-ready `data` of an event."""
        return self.model_dump(mode="json", by_alias=True)


class AuthorData(EventData):
    """A public profile; absent bio and image are empty strings, as in the API."""

    username: str = Field(examples=["jake"])
    bio: str = Field(examples=["I work at statefarm"])
    image: str = Field(examples=["https://api.realworld.io/images/smiley-cyrus.jpg"])


class ProfileRef(EventData):
    """A user, by username."""

    username: str = Field(examples=["jake"])


class ArticleData(EventData):
    """An article as `GET /articles/{slug}` shows it, without `favorited`/`following`."""

    slug: str = Field(examples=["how-to-train-your-dragon"])
    title: str = Field(examples=["How to train your dragon"])
    description: str = Field(examples=["Ever wonder how?"])
    body: str = Field(examples=["You have to believe"])
    tag_list: list[str] = Field(alias="tagList", examples=[["dragons", "training"]])
    created_at: Timestamp = Field(alias="createdAt")
    updated_at: Timestamp = Field(alias="updatedAt")
    favorites_count: int = Field(alias="favoritesCount", ge=0, examples=[0])
    author: AuthorData


class ArticleEventData(EventData):
    """`article.created`, `article.updated`, `article.deleted`: the article at that moment."""

    article: ArticleData


class ArticleRef(EventData):
    """An article, by slug."""

    slug: str = Field(examples=["how-to-train-your-dragon"])


class CommentData(EventData):
    """A comment as the API shows it, without `author.following`."""

    id: int = Field(examples=[1])
    body: str = Field(examples=["It takes a Jacobian"])
    created_at: Timestamp = Field(alias="createdAt")
    updated_at: Timestamp = Field(alias="updatedAt")
    author: AuthorData


class CommentEventData(EventData):
    """`comment.created`, `comment.deleted`: the comment and the article it is on."""

    comment: CommentData
    article: ArticleRef


class FavoriteArticle(EventData):
    """The favorited article and its favorites count after the change."""

    slug: str = Field(examples=["how-to-train-your-dragon"])
    favorites_count: int = Field(alias="favoritesCount", ge=0, examples=[1])


class FavoriteEventData(EventData):
    """`article.favorited`, `article.unfavorited`: which article, and who."""

    article: FavoriteArticle
    profile: ProfileRef


class FollowEventData(EventData):
    """`profile.followed`, `profile.unfollowed`: the profile followed or unfollowed."""

    profile: ProfileRef


class UserData(EventData):
    """The account as `GET /user` shows it, without the token."""

    username: str = Field(examples=["jake"])
    email: str = Field(examples=["jake@jake.jake"])
    bio: str = Field(examples=["I work at statefarm"])
    image: str = Field(examples=["https://api.realworld.io/images/smiley-cyrus.jpg"])


class UserEventData(EventData):
    """`user.updated`: the account after the change."""

    user: UserData


class PingData(EventData):
    """`webhook.ping`: a test event for one endpoint."""

    webhook_id: uuid.UUID = Field(alias="webhookId")
    message: str = Field(examples=["ping"])


# --- builders: model objects in, the `data` of an event out --------------------------------


def _author(user: User) -> AuthorData:
    return AuthorData(username=user.username, bio=user.bio or "", image=user.image or "")


def _sorted_tags(names: Sequence[str]) -> list[str]:
    # The API's order (`service.schemas.article.sort_tags`): case-insensitive, then by code point.
    return sorted(names, key=lambda name: (name.casefold(), name))


def article_data(
    article: Article, *, author: User, tags: Sequence[str], favorites_count: int
) -> dict[str, Any]:
    """`data` of `article.created`, `article.updated` and `article.deleted`."""
    return ArticleEventData(
        article=ArticleData(
            slug=article.slug,
            title=article.title,
            description=article.description,
            body=article.body,
            tag_list=_sorted_tags(tags),
            created_at=article.created_at,
            updated_at=article.updated_at,
            favorites_count=favorites_count,
            author=_author(author),
        )
    ).to_data()


def article_view_data(view: ArticleView) -> dict[str, Any]:
    """`article_data` of an article as the article services return it."""
    return article_data(
        view.article, author=view.author, tags=view.tags, favorites_count=view.favorites_count
    )


def comment_data(comment: Comment, *, author: User, article_slug: str) -> dict[str, Any]:
    """`data` of `comment.created` and `comment.deleted`."""
    return CommentEventData(
        comment=CommentData(
            id=comment.id,
            body=comment.body,
            created_at=comment.created_at,
            updated_at=comment.updated_at,
            author=_author(author),
        ),
        article=ArticleRef(slug=article_slug),
    ).to_data()


def favorite_data(*, article_slug: str, favorites_count: int, user: User) -> dict[str, Any]:
    """`data` of `article.favorited` and `article.unfavorited`; `user` is who (un)favorited."""
    return FavoriteEventData(
        article=FavoriteArticle(slug=article_slug, favorites_count=favorites_count),
        profile=ProfileRef(username=user.username),
    ).to_data()


def follow_data(*, followee: User) -> dict[str, Any]:
    """`data` of `profile.followed` and `profile.unfollowed`."""
    return FollowEventData(profile=ProfileRef(username=followee.username)).to_data()


def user_data(user: User) -> dict[str, Any]:
    """`data` of `user.updated`."""
    return UserEventData(
        user=UserData(
            username=user.username, email=user.email, bio=user.bio or "", image=user.image or ""
        )
    ).to_data()


def ping_data(*, webhook_id: uuid.UUID) -> dict[str, Any]:
    """`data` of `webhook.ping`."""
    return PingData(webhook_id=webhook_id, message="ping").to_data()


# --- the catalogue ---------------------------------------------------------------------------

_AUTHOR = {
    "username": "jake",
    "bio": "I work at statefarm",
    "image": "https://api.realworld.io/images/smiley-cyrus.jpg",
}
_ARTICLE = {
    "article": {
        "slug": "how-to-train-your-dragon",
        "title": "How to train your dragon",
        "description": "Ever wonder how?",
        "body": "You have to believe",
        "tagList": ["dragons", "training"],
        "createdAt": _EXAMPLE_TIME,
        "updatedAt": _EXAMPLE_TIME,
        "favoritesCount": 0,
        "author": _AUTHOR,
    }
}
_COMMENT = {
    "comment": {
        "id": 1,
        "body": "It takes a Jacobian",
        "createdAt": _EXAMPLE_TIME,
        "updatedAt": _EXAMPLE_TIME,
        "author": _AUTHOR,
    },
    "article": {"slug": "how-to-train-your-dragon"},
}
_PUBLIC = "Sent to every subscribed endpoint."


def _favorite(count: int) -> dict[str, Any]:
    return {
        "article": {"slug": "how-to-train-your-dragon", "favoritesCount": count},
        "profile": {"username": "jake"},
    }


EVENT_TYPES: tuple[EventType, ...] = (
    EventType(
        events.ARTICLE_CREATED, f"An article was published. {_PUBLIC}", ArticleEventData, _ARTICLE
    ),
    EventType(
        events.ARTICLE_UPDATED,
        f"An article was edited; `data` is the article after the change. {_PUBLIC}",
        ArticleEventData,
        _ARTICLE,
    ),
    EventType(
        events.ARTICLE_DELETED,
        f"An article was deleted (by its author or a moderator); `data` is the article as it "
        f"was. {_PUBLIC}",
        ArticleEventData,
        _ARTICLE,
    ),
    EventType(
        events.COMMENT_CREATED,
        f"A comment was added to an article. {_PUBLIC}",
        CommentEventData,
        _COMMENT,
    ),
    EventType(
        events.COMMENT_DELETED,
        f"A comment was deleted; `data` is the comment as it was. {_PUBLIC}",
        CommentEventData,
        _COMMENT,
    ),
    EventType(
        events.ARTICLE_FAVORITED,
        f"A user favorited an article; `favoritesCount` is the count after it. {_PUBLIC}",
        FavoriteEventData,
        _favorite(1),
    ),
    EventType(
        events.ARTICLE_UNFAVORITED,
        f"A user removed an article from their favorites. {_PUBLIC}",
        FavoriteEventData,
        _favorite(0),
    ),
    EventType(
        events.PROFILE_FOLLOWED,
        "The endpoint's owner followed a profile. Sent only to the follower's endpoints "
        "(who follows whom is visible to the follower alone).",
        FollowEventData,
        {"profile": {"username": "jake"}},
    ),
    EventType(
        events.PROFILE_UNFOLLOWED,
        "The endpoint's owner unfollowed a profile. Sent only to the follower's endpoints.",
        FollowEventData,
        {"profile": {"username": "jake"}},
    ),
    EventType(
        events.USER_UPDATED,
        "The endpoint's owner changed their account; `data` is the account after the change. "
        "Sent only to that user's endpoints.",
        UserEventData,
        {"user": {**_AUTHOR, "email": "jake@jake.jake"}},
    ),
    EventType(
        events.WEBHOOK_PING,
        "A test event, sent by `POST /webhooks/{id}/ping` to that endpoint alone, whatever "
        "event types it subscribed to.",
        PingData,
        {"webhookId": "0b7e8e04-5c4e-4a0c-9d57-3c8f4e1c2a10", "message": "ping"},
    ),
)
BY_NAME: dict[str, EventType] = {entry.name: entry for entry in EVENT_TYPES}
