"""Profiles and following."""

from __future__ import annotations

from urllib.parse import quote

from flask import Blueprint, Response, jsonify

from service.api import pagination
from service.api.auth import PendingViewer
from service.api.idempotency import idempotent
from service.api.spec import operation
from service.api.v1 import cached
from service.domain import scopes
from service.infra.db import db
from service.models import User
from service.schemas.profile import (
    FOLLOWING_RESPONSE_EXAMPLE,
    PROFILE_RESPONSE_EXAMPLE,
    ProfileOut,
    ProfileResponse,
)
from service.services import profiles as profiles_service

bp = Blueprint("profiles", __name__)

TAGS = ["Profile"]


NOT_FOUND_EXAMPLE = {"errors": {"profile": ["not found"]}}
SELF_FOLLOW_EXAMPLE = {"errors": {"username": [profiles_service.SELF_FOLLOW]}}
UNAUTHORIZED_EXAMPLE = {"errors": {"token": ["authentication required"]}}


def _profile_response(profile: ProfileOut) -> Response:
    return _with_self(jsonify(ProfileResponse(profile=profile).to_json()), profile.username)


def _with_self(response: Response, username: str) -> Response:
    return pagination.with_self(response, f"/api/v1/profiles/{quote(username, safe='')}")


@bp.get("/profiles/<username>")
@operation(
    responses={200: ProfileResponse},
    tags=TAGS,
    auth="optional",
    defer_viewer=True,
    scope=scopes.ARTICLES_READ,
    errors=[404],
    examples={200: PROFILE_RESPONSE_EXAMPLE, 404: NOT_FOUND_EXAMPLE},
    headers=pagination.self_headers(),
)
async def get_profile(username: str, viewer: PendingViewer) -> Response:
    """Get a profile.

    Usernames match regardless of case. Authentication is optional; `following` is false for
    anonymous callers.
    """
    found = await cached.profile(viewer, username)
    return _with_self(jsonify(found), found["profile"]["username"])


@bp.post("/profiles/<username>/follow")
@operation(
    responses={200: ProfileResponse},
    tags=TAGS,
    auth="required",
    scope=scopes.PROFILE_WRITE,
    errors=[403, 404],
    examples={
        200: FOLLOWING_RESPONSE_EXAMPLE,
        401: UNAUTHORIZED_EXAMPLE,
        404: NOT_FOUND_EXAMPLE,
        403: SELF_FOLLOW_EXAMPLE,
    },
    headers=pagination.self_headers(),
)
@idempotent
async def follow_user(username: str, viewer: User) -> Response:
    """Follow a user.

    Idempotent: following someone you already follow answers 200 again. Following yourself
    answers 403. Any request body is ignored.
    """
    profile = await profiles_service.follow(session=db.session, follower=viewer, username=username)
    return _profile_response(profile)


@bp.delete("/profiles/<username>/follow")
@operation(
    responses={200: ProfileResponse},
    tags=TAGS,
    auth="required",
    scope=scopes.PROFILE_WRITE,
    errors=[403, 404],
    examples={
        200: PROFILE_RESPONSE_EXAMPLE,
        401: UNAUTHORIZED_EXAMPLE,
        404: NOT_FOUND_EXAMPLE,
        403: SELF_FOLLOW_EXAMPLE,
    },
    headers=pagination.self_headers(),
)
async def unfollow_user(username: str, viewer: User) -> Response:
    """Unfollow a user.

    Idempotent: unfollowing someone you do not follow answers 200 with `following: false`.
    Unfollowing yourself answers 403.
    """
    profile = await profiles_service.unfollow(
        session=db.session, follower=viewer, username=username
    )
    return _profile_response(profile)
