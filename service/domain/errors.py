"""Domain exceptions; `service.api.errors` is the one place that maps them to HTTP."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every expected failure; `field` names what the client got wrong."""

    def __init__(self, message: str, *, field: str = "body") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(DomainError):
    """The request is well-formed but breaks a rule (422)."""


class NotAuthenticated(DomainError):
    """No valid credentials were presented (401)."""


class PermissionDenied(DomainError):
    """The caller is known but may not do this (403)."""


class NotFound(DomainError):
    """The resource does not exist (404)."""


class Conflict(DomainError):
    """The request clashes with the current state, e.g. a taken username (409)."""


class PreconditionFailed(DomainError):
    """An `If-Match` names a version the resource no longer has (412)."""


class PreconditionRequired(DomainError):
    """A conditional write was sent without `If-Match` while the server requires one (428)."""


class TooManyRequests(DomainError):
    """Too many attempts; the client may retry after `retry_after` seconds (429)."""

    def __init__(self, message: str, *, retry_after: int, field: str = "body") -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after


class ServiceUnavailable(DomainError):
    """A dependency (database, Redis) cannot be reached (503)."""


class OAuthError(DomainError):
    """An OAuth 2.0 error of the token or revocation endpoint (RFC 6749 §5.2): `error` is the
    registered code (`invalid_grant`, ...), the message its `error_description`.

    `commit` asks for the transaction to be committed anyway: refusing a reused refresh token
    revokes its session, and that must stick.
    """

    def __init__(
        self, error: str, description: str, *, status: int = 400, commit: bool = False
    ) -> None:
        super().__init__(description, field="error")
        self.error = error
        self.status = status
        self.commit = commit
