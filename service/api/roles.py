"""Role checks for views: `require_role(viewer, "admin")` as a view's first statement."""

from __future__ import annotations

from service.domain.errors import PermissionDenied
from service.models import User


def require_role(viewer: User, *roles: str) -> None:
    """Raise 403 `{"errors": {"role": ["requires one of: admin"]}}` unless `viewer` has one of
    `roles`."""
    if viewer.role not in roles:
        raise PermissionDenied(f"requires one of: {', '.join(roles)}", field="role")
