"""Administration: the admin view of users, role and suspension changes, the audit log."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, StrictBool, field_validator

from service.domain.audit import AuditRecord
from service.models import User
from service.schemas.article import reject_null
from service.schemas.common import InModel, OutModel, PageQuery, Timestamp, no_nul, optional

Role = Literal["user", "moderator", "admin"]
QueryText = Annotated[str, AfterValidator(no_nul)]


class AdminUserListQuery(PageQuery):
    """Filters of `GET /admin/users`; they combine. An empty `q` means no filter; `role` and
    `status` must be one of their values, as documented."""

    role: Role | None = optional(description="Only users with this role")
    status: Literal["active", "suspended"] | None = optional(
        description="Only users who are (not) suspended"
    )
    q: QueryText | None = optional(
        description="Only users whose username or email contains this text (any case)"
    )

    @field_validator("q", mode="before")
    @classmethod
    def _empty_is_absent(cls, value: Any) -> Any:
        return value or None


class AdminUserUpdate(InModel):
    """Fields to change; absent fields stay as they are, at least one is required."""

    # Documented like the check in services.admin.update_user: at least one field is sent.
    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": [name]} for name in ("role", "suspended")]}
    )

    role: Role | None = optional(examples=["moderator"])
    # Strict: `"true"` or `1` is not a boolean in JSON.
    suspended: StrictBool | None = optional(examples=[True])

    @field_validator("role", "suspended", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        return reject_null(value)


class AdminUserUpdateRequest(InModel):
    """`{"user": {"role"?, "suspended"?}}`."""

    user: AdminUserUpdate


class AdminUserOut(OutModel):
    """A user as admins see them."""

    username: str = Field(examples=["jake"])
    email: str = Field(examples=["jake@jake.jake"])
    role: Role = Field(examples=["user"])
    suspended: bool = Field(examples=[False])
    created_at: Timestamp = Field(alias="createdAt")

    @classmethod
    def of(cls, user: User) -> AdminUserOut:
        """The admin view of `user`."""
        return cls(
            username=user.username,
            email=user.email,
            role=user.role,  # the role_known constraint holds it to Role
            suspended=user.suspended,
            created_at=user.created_at,
        )


class AdminUserResponse(OutModel):
    """`{"user": {...}}`."""

    user: AdminUserOut


class AdminUsersResponse(OutModel):
    """`{"users": [...], "usersCount": N}`, newest first."""

    users: list[AdminUserOut]
    users_count: int = Field(alias="usersCount", examples=[1])


class AuditQuery(PageQuery):
    """Filters of `GET /admin/audit`; they combine, and an empty value means no filter."""

    action: QueryText | None = optional(description="Only this action, e.g. `user.suspend`")
    actor: QueryText | None = optional(description="Only actions by this username (any case)")

    @field_validator("action", "actor", mode="before")
    @classmethod
    def _empty_is_absent(cls, value: Any) -> Any:
        return value or None


class AuditEntryOut(OutModel):
    """One admin or moderator action; `actor` is null for the command line."""

    id: int = Field(examples=[1])
    actor: str | None = Field(examples=["jake"])
    action: str = Field(examples=["user.role_change"])
    target_type: str = Field(alias="targetType", examples=["user"])
    target_id: str = Field(alias="targetId", examples=["celeb_"])
    details: dict[str, Any] = Field(examples=[{"from": "user", "to": "moderator", "via": "api"}])
    created_at: Timestamp = Field(alias="createdAt")

    @classmethod
    def of(cls, record: AuditRecord) -> AuditEntryOut:
        """The listed form of `record`."""
        return cls(
            id=record.id,
            actor=record.actor,
            action=record.action,
            target_type=record.target_type,
            target_id=record.target_id,
            details=record.details,
            created_at=record.created_at,
        )


class AuditResponse(OutModel):
    """`{"entries": [...], "entriesCount": N}`, newest first."""

    entries: list[AuditEntryOut]
    entries_count: int = Field(alias="entriesCount", examples=[1])


# OpenAPI examples of the models above; the views attach them to their operations.
ADMIN_USER_EXAMPLE: dict[str, Any] = {
    "username": "jake",
    "email": "jake@jake.jake",
    "role": "moderator",
    "suspended": False,
    "createdAt": "2026-01-02T03:04:05.678Z",
}
ADMIN_USER_RESPONSE_EXAMPLE: dict[str, Any] = {"user": ADMIN_USER_EXAMPLE}
ADMIN_USERS_RESPONSE_EXAMPLE: dict[str, Any] = {"users": [ADMIN_USER_EXAMPLE], "usersCount": 1}
ADMIN_USER_UPDATE_EXAMPLE: dict[str, Any] = {"user": {"role": "moderator"}}
AUDIT_ENTRY_EXAMPLE: dict[str, Any] = {
    "id": 1,
    "actor": "admin",
    "action": "user.role_change",
    "targetType": "user",
    "targetId": "jake",
    "details": {"from": "user", "to": "moderator", "via": "api"},
    "createdAt": "2026-01-02T03:04:05.678Z",
}
AUDIT_RESPONSE_EXAMPLE: dict[str, Any] = {"entries": [AUDIT_ENTRY_EXAMPLE], "entriesCount": 1}
