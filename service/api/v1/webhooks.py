"""Outbound webhooks: endpoints (secret shown once), the event catalogue, the delivery log."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar
from urllib.parse import quote

from flask import Blueprint, Response, jsonify
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import UUIDConverter

from service.api import pagination
from service.api.idempotency import idempotent
from service.api.spec import body_of, operation, query_of
from service.domain import scopes
from service.infra.address_policy import AddressPolicy
from service.infra.db import db
from service.infra.extensions import SETTINGS
from service.infra.secret_box import SecretBox
from service.models import User
from service.schemas.common import PageQuery
from service.schemas.webhook import (
    MESSAGE_DETAIL_RESPONSE_EXAMPLE,
    MESSAGES_RESPONSE_EXAMPLE,
    PING_RESPONSE_EXAMPLE,
    RECOVER_EXAMPLE,
    RECOVER_RESPONSE_EXAMPLE,
    REDELIVERY_RESPONSE_EXAMPLE,
    WEBHOOK_CREATE_EXAMPLE,
    WEBHOOK_CREATED_EXAMPLE,
    WEBHOOK_RESPONSE_EXAMPLE,
    WEBHOOK_ROTATED_EXAMPLE,
    WEBHOOK_UPDATE_EXAMPLE,
    WEBHOOKS_RESPONSE_EXAMPLE,
    WebhookCreateRequest,
    WebhookEventTypeOut,
    WebhookEventTypesResponse,
    WebhookListResponse,
    WebhookMessageDetailOut,
    WebhookMessageDetailResponse,
    WebhookMessageListResponse,
    WebhookMessageOut,
    WebhookMessageQuery,
    WebhookMessageResponse,
    WebhookOut,
    WebhookRecoverRequest,
    WebhookRecoverResponse,
    WebhookResponse,
    WebhookSecretOut,
    WebhookSecretResponse,
    WebhookUpdateRequest,
)
from service.services import webhooks as webhooks_service

bp = Blueprint("webhooks", __name__)

TAGS = ["Webhooks"]
# What every webhook management operation shares.
_MANAGED: dict[str, Any] = {"tags": TAGS, "auth": "required", "scope": scopes.WEBHOOKS_MANAGE}
CONVERTER = "webhook_id"


class WebhookIdConverter(UUIDConverter):
    """A webhook id: a UUID in its canonical hyphenated form (any case)."""

    openapi_schema: ClassVar[dict[str, Any]] = {
        "type": "string",
        "format": "uuid",
        "pattern": (
            "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
        ),
        "description": "The webhook's id",
        "example": "0b7e8e04-5c4e-4a0c-9d57-3c8f4e1c2a10",
    }


def _register_converter(state: BlueprintSetupState) -> None:
    # Before this blueprint's rules (deferred functions run in order): they look it up.
    state.app.url_map.converters.setdefault(CONVERTER, WebhookIdConverter)


bp.record(_register_converter)


def _policy() -> AddressPolicy:
    return SETTINGS.get().webhook_policy


def _secret_box() -> SecretBox:
    return SETTINGS.get().webhook_secret_box


_NOT_FOUND = {"errors": {"webhook": ["webhook not found"]}}
_DISABLED = {"errors": {"webhook": [webhooks_service.DISABLED]}}


@bp.post("/webhooks")
@operation(
    responses={201: WebhookSecretResponse},
    **_MANAGED,
    body=WebhookCreateRequest,
    errors=[409],
    examples={
        201: WEBHOOK_CREATED_EXAMPLE,
        409: {"errors": {"webhook": ["at most 20 webhooks per user"]}},
        422: {
            "errors": {
                "url": ["169.254.169.254, a cloud metadata address, may not receive webhooks"]
            }
        },
    },
    body_example=WEBHOOK_CREATE_EXAMPLE,
    headers=pagination.self_headers(201),
)
@idempotent
async def create_webhook(viewer: User) -> tuple[Response, int]:
    """Subscribe a URL to event types.

    The `secret` signs every delivery (Standard Webhooks); it is shown in this answer only:
    keep it. URLs that lead to private, loopback, link-local or metadata addresses are
    refused (422). At most 20 webhooks per user (409 beyond).
    """
    body = body_of(WebhookCreateRequest)
    view = await webhooks_service.create_endpoint(
        session=db.session,
        owner=viewer,
        data=body.webhook,
        policy=_policy(),
        box=_secret_box(),
    )
    out = WebhookSecretResponse(webhook=WebhookSecretOut.with_secret(view))
    return _with_self(jsonify(out.to_json()), view.endpoint.id), 201


def _with_self(response: Response, webhook_id: uuid.UUID) -> Response:
    return pagination.with_self(response, f"/api/v1/webhooks/{webhook_id}")


@bp.get("/webhooks")
@operation(
    responses={200: WebhookListResponse},
    **_MANAGED,
    query=PageQuery,
    examples={200: WEBHOOKS_RESPONSE_EXAMPLE},
    headers=pagination.LIST_HEADERS,
)
async def list_webhooks(viewer: User) -> Response:
    """List your webhooks, newest first (admins: everyone's); never their secrets."""
    query = query_of(PageQuery)
    window = pagination.window(query, "webhooks")
    page = await webhooks_service.list_endpoints(
        session=db.session,
        viewer=viewer,
        limit=query.limit,
        offset=query.offset,
        position=window.position,
    )
    out = WebhookListResponse(
        webhooks=[WebhookOut.of(view) for view in page.items], webhooks_count=page.total
    )
    return pagination.page_json(out.to_json(), page, window, "webhooks")


@bp.get("/webhooks/event-types")
@operation(responses={200: WebhookEventTypesResponse}, tags=TAGS)
async def list_webhook_event_types() -> Response:
    """List the event types with the JSON schema and an example of each one's `data`.

    Every delivery's body is `{"type", "timestamp", "data"}`; `type` is one of these.
    """
    out = WebhookEventTypesResponse(
        event_types=[WebhookEventTypeOut.of(entry) for entry in webhooks_service.event_types()]
    )
    return jsonify(out.to_json())


@bp.get(f"/webhooks/<{CONVERTER}:webhook_id>")
@operation(
    responses={200: WebhookResponse},
    **_MANAGED,
    errors=[404],
    examples={200: WEBHOOK_RESPONSE_EXAMPLE, 404: _NOT_FOUND},
    headers=pagination.self_headers(),
)
async def get_webhook(webhook_id: uuid.UUID, viewer: User) -> Response:
    """Get one of your webhooks (admins: anyone's)."""
    view = await webhooks_service.get_endpoint(
        session=db.session, viewer=viewer, endpoint_id=webhook_id
    )
    return _with_self(jsonify(WebhookResponse(webhook=WebhookOut.of(view)).to_json()), webhook_id)


@bp.patch(f"/webhooks/<{CONVERTER}:webhook_id>")
@operation(
    responses={200: WebhookResponse},
    **_MANAGED,
    body=WebhookUpdateRequest,
    errors=[404],
    examples={200: WEBHOOK_RESPONSE_EXAMPLE, 404: _NOT_FOUND},
    body_example=WEBHOOK_UPDATE_EXAMPLE,
    headers=pagination.self_headers(),
)
async def update_webhook(webhook_id: uuid.UUID, viewer: User) -> Response:
    """Change a webhook's URL, event types, description, rate limit, or enable/disable it.

    Re-enabling a disabled webhook clears `disabledReason` and `failingSince`.
    """
    body = body_of(WebhookUpdateRequest)
    view = await webhooks_service.update_endpoint(
        session=db.session,
        viewer=viewer,
        endpoint_id=webhook_id,
        data=body.webhook,
        policy=_policy(),
    )
    return _with_self(jsonify(WebhookResponse(webhook=WebhookOut.of(view)).to_json()), webhook_id)


@bp.delete(f"/webhooks/<{CONVERTER}:webhook_id>")
@operation(
    responses={204: None},
    **_MANAGED,
    errors=[404],
    examples={404: _NOT_FOUND},
)
async def delete_webhook(webhook_id: uuid.UUID, viewer: User) -> tuple[str, int]:
    """Delete a webhook with its delivery log; nothing more is sent to it."""
    await webhooks_service.delete_endpoint(
        session=db.session, viewer=viewer, endpoint_id=webhook_id
    )
    return "", 204


@bp.post(f"/webhooks/<{CONVERTER}:webhook_id>/rotate-secret")
@operation(
    responses={200: WebhookSecretResponse},
    **_MANAGED,
    errors=[404],
    examples={
        200: WEBHOOK_ROTATED_EXAMPLE,
        403: {"errors": {"webhook": ["only the owner may rotate the secret"]}},
        404: _NOT_FOUND,
    },
)
async def rotate_webhook_secret(webhook_id: uuid.UUID, viewer: User) -> Response:
    """Issue a new signing secret, shown in this answer only (owner only: 403 for admins).

    For 24 hours the old secret keeps signing too: each delivery's `webhook-signature`
    carries both signatures, so receivers can switch to the new secret at their own pace.
    """
    view = await webhooks_service.rotate_secret(
        session=db.session, viewer=viewer, endpoint_id=webhook_id, box=_secret_box()
    )
    return jsonify(WebhookSecretResponse(webhook=WebhookSecretOut.with_secret(view)).to_json())


@bp.post(f"/webhooks/<{CONVERTER}:webhook_id>/ping")
@operation(
    responses={202: WebhookMessageResponse},
    **_MANAGED,
    errors=[404, 409],
    examples={
        202: PING_RESPONSE_EXAMPLE,
        404: _NOT_FOUND,
        409: _DISABLED,
    },
)
async def ping_webhook(webhook_id: uuid.UUID, viewer: User) -> tuple[Response, int]:
    """Send a `webhook.ping` test event to this webhook (whatever types it subscribed to).

    The answer names the queued message; follow it in the delivery log.
    """
    view = await webhooks_service.ping(session=db.session, viewer=viewer, endpoint_id=webhook_id)
    return jsonify(WebhookMessageResponse(message=WebhookMessageOut.of(view)).to_json()), 202


@bp.get(f"/webhooks/<{CONVERTER}:webhook_id>/messages")
@operation(
    responses={200: WebhookMessageListResponse},
    **_MANAGED,
    query=WebhookMessageQuery,
    errors=[404],
    headers=pagination.LIST_HEADERS,
    examples={200: MESSAGES_RESPONSE_EXAMPLE, 404: _NOT_FOUND},
)
async def list_webhook_messages(webhook_id: uuid.UUID, viewer: User) -> Response:
    """The delivery log: the webhook's messages, newest first, optionally by status."""
    query = query_of(WebhookMessageQuery)
    # Per endpoint: a cursor of one endpoint's log is refused on another's.
    scope = f"webhook-messages:{webhook_id}"
    window = pagination.window(query, scope)
    page = await webhooks_service.list_messages(
        session=db.session,
        viewer=viewer,
        endpoint_id=webhook_id,
        status=query.status,
        limit=query.limit,
        offset=query.offset,
        position=window.position,
    )
    out = WebhookMessageListResponse(
        messages=[WebhookMessageOut.of(view) for view in page.items],
        messages_count=page.total,
    )
    return pagination.page_json(out.to_json(), page, window, scope)


@bp.get(f"/webhooks/<{CONVERTER}:webhook_id>/messages/<message_id>")
@operation(
    responses={200: WebhookMessageDetailResponse},
    **_MANAGED,
    errors=[404],
    examples={
        200: MESSAGE_DETAIL_RESPONSE_EXAMPLE,
        404: {"errors": {"message": ["message not found"]}},
    },
    headers=pagination.self_headers(),
)
async def get_webhook_message(webhook_id: uuid.UUID, message_id: str, viewer: User) -> Response:
    """One message of the delivery log with its payload and every attempt, oldest first."""
    detail = await webhooks_service.get_message(
        session=db.session, viewer=viewer, endpoint_id=webhook_id, message_id=message_id
    )
    out = WebhookMessageDetailResponse(message=WebhookMessageDetailOut.of_detail(detail))
    path = f"/api/v1/webhooks/{webhook_id}/messages/{quote(message_id, safe='')}"
    return pagination.with_self(jsonify(out.to_json()), path)


@bp.post(f"/webhooks/<{CONVERTER}:webhook_id>/messages/<message_id>/redeliver")
@operation(
    responses={202: WebhookMessageResponse},
    **_MANAGED,
    errors=[404, 409],
    examples={
        202: REDELIVERY_RESPONSE_EXAMPLE,
        404: {"errors": {"message": ["message not found"]}},
        409: _DISABLED,
    },
)
async def redeliver_webhook_message(
    webhook_id: uuid.UUID, message_id: str, viewer: User
) -> tuple[Response, int]:
    """Send a message again now, with the same `webhook-id` (409 while the webhook is disabled).

    One more attempt is made at once; if it fails, the message's retry schedule goes on
    where it was (a message whose retries were used up fails again, without disabling the
    webhook). For a pending message, this brings its next retry forward.
    """
    view = await webhooks_service.redeliver(
        session=db.session, viewer=viewer, endpoint_id=webhook_id, message_id=message_id
    )
    return jsonify(WebhookMessageResponse(message=WebhookMessageOut.of(view)).to_json()), 202


@bp.post(f"/webhooks/<{CONVERTER}:webhook_id>/recover")
@operation(
    responses={202: WebhookRecoverResponse},
    **_MANAGED,
    body=WebhookRecoverRequest,
    errors=[404, 409],
    examples={202: RECOVER_RESPONSE_EXAMPLE, 404: _NOT_FOUND, 409: _DISABLED},
    body_example=RECOVER_EXAMPLE,
)
async def recover_webhook_messages(webhook_id: uuid.UUID, viewer: User) -> tuple[Response, int]:
    """Send again every failed message created since a moment (after an outage, say).

    Each gets one more attempt at once, as with redelivery; the answer says how many were
    queued (409 while the webhook is disabled: enable it first).
    """
    body = body_of(WebhookRecoverRequest)
    count = await webhooks_service.recover(
        session=db.session, viewer=viewer, endpoint_id=webhook_id, since=body.since
    )
    return jsonify(WebhookRecoverResponse(recovered=count).to_json()), 202
