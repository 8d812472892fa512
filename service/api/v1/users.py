"""Registration, login and the current user."""

from __future__ import annotations

from typing import Any, cast

from flask import Blueprint, Response, jsonify, request

from service.api.auth import auth, bearer_token
from service.api.spec import operation
from service.db import db
from service.models import User
from service.schemas.user import (
    UserCreateRequest,
    UserLoginRequest,
    UserOut,
    UserResponse,
    UserUpdateRequest,
)
from service.services import users as users_service

bp = Blueprint("users", __name__)

TAGS = ["User and Authentication"]
USER_EXAMPLE: dict[str, Any] = {
    "user": {
        "email": "jake@jake.jake",
        "token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "username": "jake",
        "bio": "I work at statefarm",
        "image": "",
    }
}
LOGIN_FAILED_EXAMPLE = {"errors": {"credentials": [users_service.BAD_CREDENTIALS]}}
UNAUTHORIZED_EXAMPLE = {"errors": {"token": ["authentication required"]}}
UPDATE_EXAMPLE = {"user": {"bio": "I like to skateboard", "image": "https://example.com/j.jpg"}}
UPDATE_ERRORS_EXAMPLE = {"errors": {"email": ["has already been taken"]}}


def _user_response(user: User, token: str, status: int = 200) -> tuple[Response, int]:
    return jsonify(UserResponse(user=UserOut.of(user, token=token)).to_json()), status


@bp.post("/users")
@operation(
    responses={201: UserResponse},
    tags=TAGS,
    body=UserCreateRequest,
    examples={201: USER_EXAMPLE, 422: {"errors": {"username": ["has already been taken"]}}},
    body_example={"user": {"username": "jake", "email": "jake@jake.jake", "password": "jakejake"}},
)
async def register_user() -> tuple[Response, int]:
    """Register a new user.

    Emails are case-insensitive and stored lower-cased; usernames (1-64 letters, digits,
    `_`, `-`, `.`) are unique regardless of case. A taken email or username answers 422 naming
    the field. Passwords have 8-256 characters.
    """
    body = cast(UserCreateRequest, request.context.body)  # type: ignore[attr-defined]
    user = await users_service.register(
        session=db.session, data=body.user, passwords=auth.passwords
    )
    return _user_response(user, auth.tokens.issue(user.id), 201)


@bp.post("/users/login")
@operation(
    responses={200: UserResponse},
    tags=TAGS,
    body=UserLoginRequest,
    errors=[401],
    examples={200: USER_EXAMPLE, 401: LOGIN_FAILED_EXAMPLE},
    body_example={"user": {"email": "jake@jake.jake", "password": "jakejake"}},
)
async def login() -> tuple[Response, int]:
    """Log in with email and password.

    A wrong password and an unknown email get the same 401 answer.
    """
    body = cast(UserLoginRequest, request.context.body)  # type: ignore[attr-defined]
    user = await users_service.authenticate(
        session=db.session, data=body.user, passwords=auth.passwords
    )
    return _user_response(user, auth.tokens.issue(user.id))


@bp.get("/user")
@operation(
    responses={200: UserResponse},
    tags=TAGS,
    auth="required",
    examples={200: USER_EXAMPLE, 401: UNAUTHORIZED_EXAMPLE},
)
async def get_current_user(viewer: User) -> tuple[Response, int]:
    """Get the current user.

    The answer carries the token that was presented.
    """
    return _user_response(viewer, bearer_token() or "")


async def _update(viewer: User) -> tuple[Response, int]:
    body = cast(UserUpdateRequest, request.context.body)  # type: ignore[attr-defined]
    user = await users_service.update_user(
        session=db.session, user=viewer, data=body.user, passwords=auth.passwords
    )
    return _user_response(user, auth.tokens.issue(user.id))


@bp.put("/user")
@operation(
    responses={200: UserResponse},
    tags=TAGS,
    auth="required",
    body=UserUpdateRequest,
    examples={200: USER_EXAMPLE, 401: UNAUTHORIZED_EXAMPLE, 422: UPDATE_ERRORS_EXAMPLE},
    body_example=UPDATE_EXAMPLE,
)
async def update_current_user(viewer: User) -> tuple[Response, int]:
    """Update the current user (a partial update, like PATCH).

    Only the fields sent change. Send at least one of `email`, `username`, `password`, `bio`,
    `image`; `null` or `""` clears `bio` and `image`. The answer carries a fresh token. A taken
    email or username answers 422 naming the field.
    """
    return await _update(viewer)


@bp.patch("/user")
@operation(
    responses={200: UserResponse},
    tags=TAGS,
    auth="required",
    body=UserUpdateRequest,
    examples={200: USER_EXAMPLE, 401: UNAUTHORIZED_EXAMPLE, 422: UPDATE_ERRORS_EXAMPLE},
    body_example=UPDATE_EXAMPLE,
)
async def patch_current_user(viewer: User) -> tuple[Response, int]:
    """Update the current user (a partial update, same as PUT).

    Only the fields sent change. Send at least one of `email`, `username`, `password`, `bio`,
    `image`; `null` or `""` clears `bio` and `image`. The answer carries a fresh token. A taken
    email or username answers 422 naming the field.
    """
    return await _update(viewer)
