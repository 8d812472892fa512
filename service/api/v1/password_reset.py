"""Password reset by email: ask for a link, then set a new password with its token."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.api.auth import auth
from service.api.idempotency import idempotent
from service.api.spec import body_of, operation
from service.infra.db import db
from service.schemas.password_reset import (
    RESET_ACCEPTED_EXAMPLE,
    RESET_CONFIRM_EXAMPLE,
    RESET_REQUEST_EXAMPLE,
    PasswordResetAccepted,
    PasswordResetConfirm,
    PasswordResetRequest,
)
from service.services import password_reset as reset_service

bp = Blueprint("password_reset", __name__)

TAGS = ["User and Authentication"]


@bp.post("/users/password-reset")
@operation(
    responses={202: PasswordResetAccepted},
    tags=TAGS,
    body=PasswordResetRequest,
    examples={
        202: RESET_ACCEPTED_EXAMPLE,
        422: {"errors": {"email": ["is not a valid email address"]}},
    },
    body_example=RESET_REQUEST_EXAMPLE,
)
@idempotent
async def request_password_reset() -> tuple[Response, int]:
    """Ask for a password reset link by email.

    Always answers 202 `{"status": "accepted"}`, after the same work whether or not the
    address has an account, so the answer reveals nothing. If it has one (not suspended), a
    mail with a single-use link follows shortly; the link's token expires after
    `PASSWORD_RESET_MINUTES` (60 by default).
    """
    body = body_of(PasswordResetRequest)
    await reset_service.request_reset(session=db.session, email=body.email)
    return jsonify(PasswordResetAccepted().to_json()), 202


@bp.post("/users/password-reset/confirm")
@operation(
    responses={204: None},
    tags=TAGS,
    body=PasswordResetConfirm,
    errors=[403],
    examples={403: {"errors": {"token": [reset_service.INVALID_TOKEN]}}},
    body_example=RESET_CONFIRM_EXAMPLE,
)
async def confirm_password_reset() -> tuple[str, int]:
    """Set a new password with the token from a reset mail.

    Answers 204. The token works once; an unknown, expired or used token answers 403
    `{"errors": {"token": ["is invalid or has expired"]}}`, a too short or too long password
    (8-256 characters) 422 naming `password`. On success every sign-in session of the account
    is revoked and its other reset links stop working; log in with the new password.
    """
    body = body_of(PasswordResetConfirm)
    await reset_service.confirm_reset(
        session=db.session, token=body.token, password=body.password, passwords=auth.passwords
    )
    return "", 204
