"""Webhook endpoints and their delivery log: `{"webhook": {...}}` in and out."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from service.domain import events
from service.domain.events import EventType, rfc3339
from service.domain.webhooks import (
    MAX_URL_LENGTH,
    EndpointSecretView,
    EndpointView,
    MessageDetail,
    MessageView,
)
from service.schemas.article import reject_null
from service.schemas.common import (
    InModel,
    OutModel,
    PageQuery,
    SchemaExtra,
    Timestamp,
    no_nul,
    optional,
)

DESCRIPTION_MAX = 500
RATE_LIMIT_MAX = 1000
_INT64_MAX = 2**63 - 1
MessageStatus = Literal["pending", "delivered", "failed"]

# The URLs the API takes with a host name, as a JSON Schema `pattern` (ECMAScript and Python
# read it alike; matched with `fullmatch`). Host: ASCII labels of letters, digits, "_" and
# inner "-", the last one starting with a letter (all-numeric names are IPv4 in disguise);
# port 1-65535 without leading zeros; then any printable ASCII but "#" and "\". IP-address
# hosts are accepted only when the server's allowlist names them, so they are left out here.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_LAST_LABEL = r"[A-Za-z](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
URL_PATTERN = (
    rf"^[Hh][Tt][Tt][Pp][Ss]?://(?:{_LABEL}\.)*{_LAST_LABEL}\.?(?::{_PORT})?"
    r'(?:[/?][!"$-\[\]-~]*)?$'
)
URL_DESCRIPTION = (
    "Where events are POSTed. `https` (plain `http` only where the server allows it, e.g. in "
    "development); the host is a domain name in ASCII (internationalised names in their "
    "`xn--` form). `localhost` names are refused, IP-address hosts too unless the server's "
    "allowlist names them, and deliveries to names that resolve to private, loopback, "
    "link-local, multicast or cloud metadata addresses fail. Stored in canonical form "
    "(lower-case host, percent-encoded path)."
)
# Every value of `events`: the catalogue's types, or "*" for all of them.
EVENT_FILTERS: tuple[str, ...] = (events.ALL_EVENTS, *events.EVENT_TYPES)
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _known_event(value: str) -> str:
    if value not in EVENT_FILTERS:
        # Pydantic fills `{name}` from the context with str() and knows no conversions such
        # as `!r`: the quoted form goes into the context.
        raise PydanticCustomError(
            "unknown_event_type",
            "unknown event type {value} (see GET /api/v1/webhooks/event-types)",
            {"value": repr(value[:64])},
        )
    return value


def _unique_events(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise PydanticCustomError("duplicate_event_type", "must not repeat an event type")
    # "*" already covers every type.
    return [events.ALL_EVENTS] if events.ALL_EVENTS in values else values


def json_integer(value: Any) -> Any:
    """Take what JSON Schema calls an integer: also `5.0`, never `"5"` or `true`.

    Huge values are clamped into 64 bits: still out of range, and the validation error (which
    carries the input) can be serialised.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return max(min(value, _INT64_MAX), -_INT64_MAX)
    return value


def parse_rfc3339(value: Any) -> datetime:
    """Read an RFC 3339 timestamp with a time zone, strictly; a 422 message otherwise."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise PydanticCustomError(
            "rfc3339", "must be an RFC 3339 timestamp with a time zone, e.g. 2026-01-02T03:04:05Z"
        )
    text = value.upper()
    # A leap second (only ever the last second of a UTC day) is read as the next second.
    leap = text[17:19] == "60"
    try:
        moment = datetime.fromisoformat(text[:17] + "59" + text[19:] if leap else text)
        moment = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        moment = None
    if moment is None or (leap and (moment.hour, moment.minute) != (23, 59)):
        raise PydanticCustomError("rfc3339", "is not a valid date and time")
    return moment + timedelta(seconds=1) if leap else moment


EventFilter = Annotated[
    str,
    AfterValidator(_known_event),
    WithJsonSchema({"type": "string", "enum": list(EVENT_FILTERS)}),
]
EventFilters = Annotated[
    list[EventFilter],
    Field(min_length=1, max_length=len(EVENT_FILTERS)),
    AfterValidator(_unique_events),
    SchemaExtra(
        uniqueItems=True,
        description=(
            'Event types to receive, or `"*"` for every type (with `"*"`, other types are '
            "redundant and dropped)"
        ),
    ),
]
WebhookUrl = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_URL_LENGTH),
    AfterValidator(no_nul),
    SchemaExtra(pattern=URL_PATTERN, description=URL_DESCRIPTION),
]
Description = Annotated[
    str,
    StringConstraints(max_length=DESCRIPTION_MAX),
    AfterValidator(no_nul),
    SchemaExtra(description="For people; may be empty"),
]
RateLimit = Annotated[
    StrictInt,
    Field(
        ge=1,
        le=RATE_LIMIT_MAX,
        description="At most this many deliveries per second to the endpoint; null: no limit",
    ),
    # After the constraints, or they would no longer appear in the JSON schema.
    BeforeValidator(json_integer),
]
Since = Annotated[
    datetime,
    BeforeValidator(parse_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time", "example": "2026-01-02T03:04:05Z"}),
]


class WebhookCreate(InModel):
    """A new endpoint."""

    url: WebhookUrl = Field(examples=["https://example.com/hooks/conduit"])
    events: EventFilters = Field(examples=[["article.created", "comment.created"]])
    description: Description = Field(default="", examples=["search indexer"])
    rate_limit: RateLimit | None = Field(default=None, alias="rateLimit", examples=[10])


class WebhookCreateRequest(InModel):
    """`{"webhook": {"url", "events", "description"?, "rateLimit"?}}`."""

    webhook: WebhookCreate


class WebhookUpdate(InModel):
    """Fields to change; absent fields stay as they are. `rateLimit: null` removes the limit;
    `enabled: true` re-enables a disabled endpoint and clears why it was disabled."""

    url: WebhookUrl | None = optional(examples=["https://example.com/hooks/conduit"])
    events: EventFilters | None = optional(examples=[["*"]])
    description: Description | None = optional()
    rate_limit: RateLimit | None = Field(default=None, alias="rateLimit")
    # Strict: `"true"` or `1` is not a boolean in JSON.
    enabled: StrictBool | None = optional(examples=[True])

    @field_validator("url", "events", "description", "enabled", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        return reject_null(value)


class WebhookUpdateRequest(InModel):
    """`{"webhook": {...}}` with the fields to change."""

    webhook: WebhookUpdate


class WebhookRecoverRequest(InModel):
    """`{"since": "<RFC 3339 timestamp>"}`."""

    since: Since = Field(description="Re-send the failed messages created at or after this time")


class WebhookMessageQuery(PageQuery):
    """Filters of the delivery log."""

    status: MessageStatus | None = optional(description="Only messages in this state")


class WebhookOut(OutModel):
    """An endpoint as its owner (or an admin) sees it; never its secret."""

    id: uuid.UUID = Field(examples=["0b7e8e04-5c4e-4a0c-9d57-3c8f4e1c2a10"])
    url: str = Field(examples=["https://example.com/hooks/conduit"])
    description: str = Field(examples=["search indexer"])
    events: list[str] = Field(examples=[["article.created", "comment.created"]])
    enabled: bool = Field(examples=[True])
    disabled_reason: str | None = Field(
        alias="disabledReason",
        description=(
            "Why deliveries stopped: `manual` (PATCH), `gone` (the receiver answered 410), "
            "`failing` (every retry failed, or failures for 5 days); null while enabled"
        ),
        examples=[None],
    )
    rate_limit: int | None = Field(alias="rateLimit", examples=[None])
    failing_since: Timestamp | None = Field(
        alias="failingSince", description="Start of the current run of failed deliveries"
    )
    previous_secret_expires_at: Timestamp | None = Field(
        alias="previousSecretExpiresAt",
        description="Until then, messages are also signed with the secret before the last rotation",
    )
    owner: str = Field(description="Username of the owner", examples=["jake"])
    created_at: Timestamp = Field(alias="createdAt")
    updated_at: Timestamp = Field(alias="updatedAt")

    @classmethod
    def of(cls, view: EndpointView) -> WebhookOut:
        """The listed form of `view`."""
        endpoint = view.endpoint
        expires = endpoint.previous_secret_expires_at
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            description=endpoint.description,
            events=list(endpoint.events),
            enabled=endpoint.enabled,
            disabled_reason=endpoint.disabled_reason,
            rate_limit=endpoint.rate_limit,
            failing_since=endpoint.failing_since,
            previous_secret_expires_at=expires if expires and expires > datetime.now(UTC) else None,
            owner=view.owner,
            created_at=endpoint.created_at,
            updated_at=endpoint.updated_at,
        )


class WebhookSecretOut(WebhookOut):
    """An endpoint with its signing secret: shown on creation and rotation only."""

    secret: str = Field(
        description="Standard Webhooks signing secret: `whsec_` and the base64 key",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )

    @classmethod
    def with_secret(cls, view: EndpointSecretView) -> WebhookSecretOut:
        """`view` with its current secret."""
        return cls(**WebhookOut.of(view).model_dump(), secret=view.secret)


class WebhookResponse(OutModel):
    """`{"webhook": {...}}`."""

    webhook: WebhookOut


class WebhookSecretResponse(OutModel):
    """`{"webhook": {..., "secret"}}`."""

    webhook: WebhookSecretOut


class WebhookListResponse(OutModel):
    """`{"webhooks": [...], "webhooksCount": n}`, newest first."""

    webhooks: list[WebhookOut]
    webhooks_count: int = Field(alias="webhooksCount", examples=[1])


class WebhookMessageOut(OutModel):
    """One event for one endpoint; `id` is the `webhook-id` header of every attempt."""

    id: str = Field(examples=["msg_0f6c1f0e8bd34a8e9d0b5c7a4e2f1d3c"])
    event_type: str = Field(alias="eventType", examples=["article.created"])
    status: MessageStatus = Field(examples=["delivered"])
    attempt_count: int = Field(alias="attemptCount", description="Attempts made so far")
    next_attempt_at: Timestamp | None = Field(
        alias="nextAttemptAt", description="When the next attempt is due (pending messages)"
    )
    last_attempt_at: Timestamp | None = Field(alias="lastAttemptAt")
    delivered_at: Timestamp | None = Field(alias="deliveredAt")
    created_at: Timestamp = Field(alias="createdAt")

    @classmethod
    def of(cls, view: MessageView) -> WebhookMessageOut:
        """The listed form of `view`."""
        message = view.message
        return cls(
            id=message.id,
            event_type=view.event_type,
            status=message.status,  # the status_known constraint holds it to MessageStatus
            attempt_count=view.attempt_count,
            next_attempt_at=message.next_attempt_at if message.status == "pending" else None,
            last_attempt_at=message.last_attempt_at,
            delivered_at=message.delivered_at,
            created_at=message.created_at,
        )


class WebhookAttemptOut(OutModel):
    """One HTTP request of a delivery; `statusCode` is null when no response arrived."""

    attempt: int = Field(examples=[1])
    started_at: Timestamp = Field(alias="startedAt")
    status_code: int | None = Field(alias="statusCode", examples=[200])
    duration_ms: int = Field(alias="durationMs", examples=[84])
    response_excerpt: str | None = Field(
        alias="responseExcerpt", description="The first bytes of the response body"
    )
    error: str | None = Field(examples=[None], description="Why no (complete) response came")


class WebhookPayloadOut(OutModel):
    """The body POSTed to the endpoint (re-serialised: verify signatures on the raw body)."""

    type: str = Field(examples=["article.created"])
    timestamp: str = Field(json_schema_extra={"format": "date-time"})
    data: dict[str, Any]


class WebhookMessageDetailOut(WebhookMessageOut):
    """A message with its payload and every attempt, oldest first."""

    payload: WebhookPayloadOut
    attempts: list[WebhookAttemptOut]

    @classmethod
    def of_detail(cls, detail: MessageDetail) -> WebhookMessageDetailOut:
        """The full form of `detail`."""
        event = detail.event
        return cls(
            **WebhookMessageOut.of(detail.view).model_dump(),
            payload=WebhookPayloadOut(
                type=event.type, timestamp=rfc3339(event.created_at), data=event.data
            ),
            attempts=[
                WebhookAttemptOut(
                    attempt=attempt.attempt,
                    started_at=attempt.started_at,
                    status_code=attempt.status_code,
                    duration_ms=attempt.duration_ms,
                    response_excerpt=attempt.response_excerpt,
                    error=attempt.error,
                )
                for attempt in detail.attempts
            ],
        )


class WebhookMessageResponse(OutModel):
    """`{"message": {...}}`."""

    message: WebhookMessageOut


class WebhookMessageDetailResponse(OutModel):
    """`{"message": {..., "payload", "attempts"}}`."""

    message: WebhookMessageDetailOut


class WebhookMessageListResponse(OutModel):
    """`{"messages": [...], "messagesCount": n}`, newest first."""

    messages: list[WebhookMessageOut]
    messages_count: int = Field(alias="messagesCount", examples=[1])


class WebhookRecoverResponse(OutModel):
    """How many failed messages were queued again."""

    recovered: int = Field(examples=[3])


class WebhookEventTypeOut(OutModel):
    """One event type: what it means, and the JSON schema and an example of its `data`."""

    type: str = Field(examples=["article.created"])
    description: str
    data_schema: dict[str, Any] = Field(alias="schema")
    data_example: dict[str, Any] = Field(alias="example")

    @classmethod
    def of(cls, entry: EventType) -> WebhookEventTypeOut:
        """The catalogue entry `entry`."""
        return cls(
            type=entry.name,
            description=entry.description,
            data_schema=entry.data_schema(),
            data_example=entry.example,
        )


class WebhookEventTypesResponse(OutModel):
    """`{"eventTypes": [...]}`."""

    event_types: list[WebhookEventTypeOut] = Field(alias="eventTypes")


# OpenAPI examples of the models above; the views attach them to their operations.
WEBHOOK_EXAMPLE: dict[str, Any] = {
    "id": "0b7e8e04-5c4e-4a0c-9d57-3c8f4e1c2a10",
    "url": "https://example.com/hooks/conduit",
    "description": "search indexer",
    "events": ["article.created", "article.updated", "article.deleted"],
    "enabled": True,
    "disabledReason": None,
    "rateLimit": None,
    "failingSince": None,
    "previousSecretExpiresAt": None,
    "owner": "jake",
    "createdAt": "2026-01-02T03:04:05.678Z",
    "updatedAt": "2026-01-02T03:04:05.678Z",
}
_SECRET_EXAMPLE = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo="  # noqa: S105 (an example)
WEBHOOK_RESPONSE_EXAMPLE: dict[str, Any] = {"webhook": WEBHOOK_EXAMPLE}
WEBHOOK_CREATED_EXAMPLE: dict[str, Any] = {
    "webhook": {**WEBHOOK_EXAMPLE, "secret": _SECRET_EXAMPLE}
}
WEBHOOK_ROTATED_EXAMPLE: dict[str, Any] = {
    "webhook": {
        **WEBHOOK_EXAMPLE,
        "previousSecretExpiresAt": "2026-01-03T03:04:05.678Z",
        "secret": _SECRET_EXAMPLE,
    }
}
WEBHOOKS_RESPONSE_EXAMPLE: dict[str, Any] = {"webhooks": [WEBHOOK_EXAMPLE], "webhooksCount": 1}
WEBHOOK_CREATE_EXAMPLE: dict[str, Any] = {
    "webhook": {
        "url": "https://example.com/hooks/conduit",
        "events": ["article.created", "article.updated", "article.deleted"],
        "description": "search indexer",
    }
}
WEBHOOK_UPDATE_EXAMPLE: dict[str, Any] = {"webhook": {"enabled": True}}
MESSAGE_EXAMPLE: dict[str, Any] = {
    "id": "msg_0f6c1f0e8bd34a8e9d0b5c7a4e2f1d3c",
    "eventType": "article.created",
    "status": "delivered",
    "attemptCount": 1,
    "nextAttemptAt": None,
    "lastAttemptAt": "2026-01-02T03:04:05.912Z",
    "deliveredAt": "2026-01-02T03:04:05.996Z",
    "createdAt": "2026-01-02T03:04:05.678Z",
}
_PENDING_EXAMPLE: dict[str, Any] = {
    **MESSAGE_EXAMPLE,
    "status": "pending",
    "attemptCount": 0,
    "nextAttemptAt": "2026-01-02T03:04:05.678Z",
    "lastAttemptAt": None,
    "deliveredAt": None,
}
PING_RESPONSE_EXAMPLE: dict[str, Any] = {
    "message": {**_PENDING_EXAMPLE, "eventType": "webhook.ping"}
}
REDELIVERY_RESPONSE_EXAMPLE: dict[str, Any] = {"message": {**_PENDING_EXAMPLE, "attemptCount": 1}}
MESSAGES_RESPONSE_EXAMPLE: dict[str, Any] = {"messages": [MESSAGE_EXAMPLE], "messagesCount": 1}
MESSAGE_DETAIL_RESPONSE_EXAMPLE: dict[str, Any] = {
    "message": {
        **MESSAGE_EXAMPLE,
        "payload": {
            "type": "article.created",
            "timestamp": "2026-01-02T03:04:05.678000Z",
            "data": {"article": {"slug": "how-to-train-your-dragon"}},
        },
        "attempts": [
            {
                "attempt": 1,
                "startedAt": "2026-01-02T03:04:05.912Z",
                "statusCode": 200,
                "durationMs": 84,
                "responseExcerpt": "ok",
                "error": None,
            }
        ],
    }
}
RECOVER_EXAMPLE: dict[str, Any] = {"since": "2026-01-02T00:00:00Z"}
RECOVER_RESPONSE_EXAMPLE: dict[str, Any] = {"recovered": 3}
