"""What the webhook services return (endpoints, the delivery log) and the URL length limit.

Here, below schemas and services, so that services build the views and schemas render them,
and the request schema and the SSRF guard share one limit, without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.models import WebhookAttempt, WebhookEndpoint, WebhookEvent, WebhookMessage

# Longest webhook URL taken: the request schema documents it, the SSRF guard enforces it.
MAX_URL_LENGTH = 2048


@dataclass(frozen=True)
class EndpointView:
    """An endpoint and its owner's username."""

    endpoint: WebhookEndpoint
    owner: str


@dataclass(frozen=True)
class EndpointSecretView(EndpointView):
    """An endpoint just created or rotated, with its signing secret in clear (shown once)."""

    secret: str


@dataclass(frozen=True)
class MessageView:
    """A message, the type of its event and how many attempts it has had."""

    message: WebhookMessage
    event_type: str
    attempt_count: int


@dataclass(frozen=True)
class MessageDetail:
    """A message with its event and its attempts, oldest first."""

    view: MessageView
    event: WebhookEvent
    attempts: list[WebhookAttempt]
