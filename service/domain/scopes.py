"""OAuth scopes: what a token may do. Every authenticated route names the one it needs."""

from __future__ import annotations

from collections.abc import Iterable

from service.domain.errors import InvalidInput

ARTICLES_READ = "articles:read"
ARTICLES_WRITE = "articles:write"
COMMENTS_WRITE = "comments:write"
PROFILE_READ = "profile:read"
PROFILE_WRITE = "profile:write"
CLIENTS_MANAGE = "clients:manage"
WEBHOOKS_MANAGE = "webhooks:manage"
ADMIN = "admin"

DESCRIPTIONS: dict[str, str] = {
    ARTICLES_READ: "Read articles, comments, tags, profiles and the feed",
    ARTICLES_WRITE: "Create, edit, delete and favorite articles",
    COMMENTS_WRITE: "Add and delete comments",
    PROFILE_READ: "Read the current user",
    PROFILE_WRITE: "Edit the current user; follow and unfollow",
    CLIENTS_MANAGE: "Create, list and delete API clients",
    WEBHOOKS_MANAGE: "Manage webhook endpoints",
    ADMIN: "Administer users and read the audit log (admins only)",
}
ALL = frozenset(DESCRIPTIONS)
# An integration's credentials cannot mint further credentials.
NOT_FOR_CLIENTS = frozenset({CLIENTS_MANAGE})
FOR_CLIENTS = ALL - NOT_FOR_CLIENTS


def allowed_for(role: str) -> frozenset[str]:
    """Every scope a user with `role` may hold; `admin` only for admins."""
    return ALL if role == ADMIN else ALL - {ADMIN}


def allowed_for_client(role: str) -> frozenset[str]:
    """The scopes an API client of a user with `role` may hold."""
    return allowed_for(role) - NOT_FOR_CLIENTS


def parse(value: str | None) -> frozenset[str] | None:
    """The scopes of a space-separated `scope` parameter; None when absent or blank."""
    if value is None or not value.strip():
        return None
    return frozenset(value.split())


def format_scope(scopes: Iterable[str]) -> str:
    """The space-separated form, sorted so it is stable."""
    return " ".join(sorted(scopes))


def validate(requested: Iterable[str], *, allowed: frozenset[str], field: str = "scopes") -> None:
    """Raise `InvalidInput` naming the scopes outside `allowed` (unknown or not granted)."""
    extra = sorted(set(requested) - allowed)
    if extra:
        raise InvalidInput(f"not allowed: {', '.join(extra)}", field=field)
