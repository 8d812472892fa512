"""Administration endpoints (admins only): users, roles, suspension, the audit log."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.api import pagination
from service.api.roles import require_role
from service.api.spec import body_of, operation, query_of
from service.domain import scopes
from service.infra.db import db
from service.models import User
from service.schemas.admin import (
    ADMIN_USER_RESPONSE_EXAMPLE,
    ADMIN_USER_UPDATE_EXAMPLE,
    ADMIN_USERS_RESPONSE_EXAMPLE,
    AUDIT_RESPONSE_EXAMPLE,
    AdminUserListQuery,
    AdminUserOut,
    AdminUserResponse,
    AdminUsersResponse,
    AdminUserUpdateRequest,
    AuditEntryOut,
    AuditQuery,
    AuditResponse,
)
from service.services import admin as admin_service
from service.services import audit as audit_service

bp = Blueprint("admin", __name__)

TAGS = ["Admin"]
ADMIN = admin_service.ADMIN

_FORBIDDEN = {"errors": {"role": [f"requires one of: {ADMIN}"]}}


@bp.get("/admin/users")
@operation(
    responses={200: AdminUsersResponse},
    tags=TAGS,
    auth="required",
    scope=scopes.ADMIN,
    query=AdminUserListQuery,
    errors=[403],
    headers=pagination.LIST_HEADERS,
    examples={200: ADMIN_USERS_RESPONSE_EXAMPLE, 403: _FORBIDDEN},
)
async def admin_list_users(viewer: User) -> Response:
    """List users newest first, filtered by role, status and username/email text (admins)."""
    require_role(viewer, ADMIN)
    query = query_of(AdminUserListQuery)
    window = pagination.window(query, "admin-users")
    page = await admin_service.list_users(
        session=db.session,
        limit=query.limit,
        offset=query.offset,
        role=query.role,
        suspended=None if query.status is None else query.status == "suspended",
        q=query.q,
        position=window.position,
    )
    out = AdminUsersResponse(
        users=[AdminUserOut.of(user) for user in page.items], users_count=page.total
    )
    return pagination.page_json(out.to_json(), page, window, "admin-users")


@bp.patch("/admin/users/<username>")
@operation(
    responses={200: AdminUserResponse},
    tags=TAGS,
    auth="required",
    scope=scopes.ADMIN,
    body=AdminUserUpdateRequest,
    errors=[403, 404, 409],
    examples={
        200: ADMIN_USER_RESPONSE_EXAMPLE,
        403: _FORBIDDEN,
        404: {"errors": {"user": ["user not found"]}},
        409: {"errors": {"role": [admin_service.LAST_ADMIN]}},
    },
    body_example=ADMIN_USER_UPDATE_EXAMPLE,
)
async def admin_update_user(username: str, viewer: User) -> Response:
    """Change a user's role and/or suspension (admins); suspending signs them out everywhere.

    The last active admin cannot be demoted or suspended, and admins cannot suspend
    themselves (409). Every change is written to the audit log.
    """
    require_role(viewer, ADMIN)
    body = body_of(AdminUserUpdateRequest)
    change = await admin_service.update_user(
        session=db.session, actor=viewer, username=username, data=body.user
    )
    return jsonify(AdminUserResponse(user=AdminUserOut.of(change.user)).to_json())


@bp.get("/admin/audit")
@operation(
    responses={200: AuditResponse},
    tags=TAGS,
    auth="required",
    scope=scopes.ADMIN,
    query=AuditQuery,
    errors=[403],
    headers=pagination.LIST_HEADERS,
    examples={200: AUDIT_RESPONSE_EXAMPLE, 403: _FORBIDDEN},
)
async def admin_list_audit(viewer: User) -> Response:
    """List audit log entries newest first, filtered by action and actor (admins)."""
    require_role(viewer, ADMIN)
    query = query_of(AuditQuery)
    window = pagination.window(query, "audit")
    page = await audit_service.list_entries(
        session=db.session,
        limit=query.limit,
        offset=query.offset,
        action=query.action,
        actor=query.actor,
        position=window.position,
    )
    out = AuditResponse(
        entries=[AuditEntryOut.of(entry) for entry in page.items], entries_count=page.total
    )
    return pagination.page_json(out.to_json(), page, window, "audit")
