"""Webhook event types: their names, what a catalogue entry is, and the envelope's timestamps.

Here, below schemas and webhooks, because both need them: the request schemas validate event
filters against the names and render catalogue entries and payloads, while the outbox, the
catalogue and the signer (in `service.webhooks`) emit, describe and sign the events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

# The filter that subscribes an endpoint to every type.
ALL_EVENTS = "*"

ARTICLE_CREATED = "article.created"
ARTICLE_UPDATED = "article.updated"
ARTICLE_DELETED = "article.deleted"
COMMENT_CREATED = "comment.created"
COMMENT_DELETED = "comment.deleted"
ARTICLE_FAVORITED = "article.favorited"
ARTICLE_UNFAVORITED = "article.unfavorited"
PROFILE_FOLLOWED = "profile.followed"
PROFILE_UNFOLLOWED = "profile.unfollowed"
USER_UPDATED = "user.updated"
WEBHOOK_PING = "webhook.ping"

EVENT_TYPES = (
    ARTICLE_CREATED,
    ARTICLE_UPDATED,
    ARTICLE_DELETED,
    COMMENT_CREATED,
    COMMENT_DELETED,
    ARTICLE_FAVORITED,
    ARTICLE_UNFAVORITED,
    PROFILE_FOLLOWED,
    PROFILE_UNFOLLOWED,
    USER_UPDATED,
    WEBHOOK_PING,
)


@dataclass(frozen=True, slots=True)
class EventType:
    """One entry of the catalogue (`service.webhooks.catalogue` lists them)."""

    name: str
    description: str
    model: type[BaseModel]
    example: dict[str, Any]

    def data_schema(self) -> dict[str, Any]:
        """The JSON schema of the `data` of this type, self-contained (no `$ref`)."""
        return inline_refs(self.model.model_json_schema(by_alias=True, mode="serialization"))


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every local `#/$defs/...` reference replaced by its definition."""
    definitions: dict[str, Any] = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/$defs/"):
                rest = {key: value for key, value in node.items() if key != "$ref"}
                return {**resolve(definitions[reference.removeprefix("#/$defs/")]), **rest}
            return {key: resolve(value) for key, value in node.items() if key != "$defs"}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def rfc3339(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC with microseconds and a `Z` suffix."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("event timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
