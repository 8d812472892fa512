"""Registration, login and the current user."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from service.api import pagination
from service.api.auth import auth, bearer_token, current_claims, sign_in
from service.api.idempotency import idempotent
from service.api.preconditions import conditional, tagged
from service.api.spec import body_of, operation
from service.domain import scopes
from service.domain.errors import PermissionDenied
from service.domain.versions import USER
from service.infra.db import db
from service.infra.redis import redis
from service.models import User
from service.schemas.user import (
    USER_CREATE_EXAMPLE,
    USER_LOGIN_EXAMPLE,
    USER_RESPONSE_EXAMPLE,
    USER_UPDATE_EXAMPLE,
    UserCreateRequest,
    UserLoginRequest,
    UserOut,
    UserResponse,
    UserUpdateRequest,
)
from service.services import login_guard, oauth, sessions
from service.services import users as users_service

bp = Blueprint("users", __name__)

TAGS = ["User and Authentication"]
LOGIN_FAILED_EXAMPLE = {"errors": {"credentials": [users_service.BAD_CREDENTIALS]}}
UNAUTHORIZED_EXAMPLE = {"errors": {"token": ["authentication required"]}}
TAKEN_EXAMPLE = {"errors": {"email": [users_service.TAKEN]}}
CREDENTIALS = frozenset({"email", "password"})
CLIENT_CREDENTIALS_CHANGE = "API client tokens cannot change the email or password"


def _user_response(user: User, token: str, status: int = 200) -> tuple[Response, int]:
    response = jsonify(UserResponse(user=UserOut.of(user, token=token)).to_json())
    return pagination.with_self(response, "/api/v1/user"), status


@bp.post("/users")
@operation(
    responses={201: UserResponse},
    tags=TAGS,
    body=UserCreateRequest,
    errors=[409],
    examples={201: USER_RESPONSE_EXAMPLE, 409: {"errors": {"username": [users_service.TAKEN]}}},
    body_example=USER_CREATE_EXAMPLE,
    headers=pagination.self_headers(201),
)
@idempotent
async def register_user() -> tuple[Response, int]:
    """Register a new user.

    Emails (ASCII) are case-insensitive and stored lower-cased; usernames (1-64 letters,
    digits, `_`, `-`, `.`) are unique regardless of case. Nothing is trimmed: each field must
    match its schema as sent. A taken email or username answers 409 naming the field.
    Passwords have 8-256 characters.
    """
    body = body_of(UserCreateRequest)
    user = await users_service.register(
        session=db.session, data=body.user, passwords=auth.passwords
    )
    return _user_response(user, await sign_in(user), 201)


@bp.post("/users/login")
@operation(
    responses={200: UserResponse},
    tags=TAGS,
    body=UserLoginRequest,
    errors=[401, 403],
    examples={200: USER_RESPONSE_EXAMPLE, 401: LOGIN_FAILED_EXAMPLE},
    body_example=USER_LOGIN_EXAMPLE,
    headers=pagination.self_headers(),
)
async def login() -> tuple[Response, int]:
    """Log in with email and password.

    A wrong password and an unknown email get the same 401 answer. After 5 failed attempts
    in a row the account is locked for a doubling delay (1 s, 2 s, ... up to 15 min): 429 with
    `Retry-After`.
    """
    body = body_of(UserLoginRequest)
    await login_guard.check(redis=redis.client, email=body.user.email)
    user = await users_service.authenticate(
        session=db.session, data=body.user, passwords=auth.passwords
    )
    await login_guard.reset(redis=redis.client, email=body.user.email)
    return _user_response(user, await sign_in(user))


@bp.get("/user")
@operation(
    responses={200: UserResponse},
    tags=TAGS,
    auth="required",
    scope=scopes.PROFILE_READ,
    examples={200: USER_RESPONSE_EXAMPLE, 401: UNAUTHORIZED_EXAMPLE},
    headers=pagination.self_headers(),
)
@tagged(USER)
async def get_current_user(viewer: User) -> tuple[Response, int]:
    """Get the current user.

    The answer carries the token that was presented.
    """
    return _user_response(viewer, bearer_token() or "")


async def _update(viewer: User) -> tuple[Response, int]:
    body = body_of(UserUpdateRequest)
    if current_claims().client_id is not None and body.user.model_fields_set & CREDENTIALS:
        # An integration acting for its owner must not be able to take the account over.
        raise PermissionDenied(CLIENT_CREDENTIALS_CHANGE, field="client")
    user = await users_service.update_user(
        session=db.session, user=viewer, data=body.user, passwords=auth.passwords
    )
    if "password" in body.user.model_fields_set:
        # Every session, this one included, was revoked: continue in a new one.
        return _user_response(user, await sign_in(user, scopes=current_claims().scopes))
    return _user_response(user, bearer_token() or "")


# PUT and PATCH are one partial update; two views only because operationIds must differ.
_UPDATE_USER: dict[str, Any] = {
    "responses": {200: UserResponse},
    "tags": TAGS,
    "auth": "required",
    "scope": scopes.PROFILE_WRITE,
    "body": UserUpdateRequest,
    "errors": [409],
    "examples": {200: USER_RESPONSE_EXAMPLE, 401: UNAUTHORIZED_EXAMPLE, 409: TAKEN_EXAMPLE},
    "body_example": USER_UPDATE_EXAMPLE,
    "headers": pagination.self_headers(),
}


@bp.put("/user")
@operation(**_UPDATE_USER)
@conditional(USER)
async def update_current_user(viewer: User) -> tuple[Response, int]:
    """Update the current user (a partial update, like PATCH).

    Only the fields sent change. Send at least one of `email`, `username`, `password`, `bio`,
    `image`; `null` or `""` clears `bio` and `image`. A taken email or username answers 409
    naming the field. A new password signs out every session (every token and refresh token
    stops working); the answer then carries a token of a new session, otherwise the token that
    was presented.
    """
    return await _update(viewer)


@bp.patch("/user")
@operation(**_UPDATE_USER)
@conditional(USER)
async def patch_current_user(viewer: User) -> tuple[Response, int]:
    """Update the current user (a partial update, same as PUT).

    Exactly the behaviour of `PUT /user`.
    """
    return await _update(viewer)


@bp.post("/users/logout")
@operation(responses={204: None}, tags=TAGS, auth="required", scope=scopes.PROFILE_READ)
async def logout(viewer: User) -> tuple[str, int]:
    """Log out: revoke the session of the presented token.

    That token (and, for OAuth sessions, the refresh token) stops working at once; other
    sessions stay signed in.
    """
    await sessions.revoke_session(
        session=db.session, session_id=current_claims().session_id, reason=oauth.LOGOUT_REASON
    )
    return "", 204
