"""Accounts: registration, login, the current user and their request/response bodies.

Validation messages are short and name no field: the error envelope names it
(`{"errors": {"username": ["can't be blank"]}}`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, Field, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from service.models import User
from service.models.user import EMAIL_MAX, USERNAME_MAX
from service.schemas.common import InModel, OutModel

PASSWORD_MIN = 8
# Bounds the argon2 input, so a huge password cannot make hashing expensive.
PASSWORD_MAX = 256
BIO_MAX = 2000
IMAGE_MAX = 2000
# ASCII only, so that a username is one safe path segment in `/profiles/{username}`.
USERNAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
_USERNAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


def _blank() -> PydanticCustomError:
    return PydanticCustomError("blank", "can't be blank")


def _too_long(maximum: int) -> PydanticCustomError:
    return PydanticCustomError(
        "too_long", "is too long (maximum is {maximum} characters)", {"maximum": maximum}
    )


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold U+0000: reject it here instead of failing in the driver.
    if "\x00" in value:
        raise PydanticCustomError("nul", "must not contain NUL characters")
    return value


def normalize_username(value: str) -> str:
    """Trim a username and check its length and characters."""
    value = value.strip()
    if not value:
        raise _blank()
    if len(value) > USERNAME_MAX:
        raise _too_long(USERNAME_MAX)
    if not _USERNAME_RE.fullmatch(value):
        raise PydanticCustomError(
            "username_chars", "may contain only letters, digits, '_', '-' and '.'"
        )
    if not value.strip("."):
        # "." and ".." would be rewritten by URL normalisation in /profiles/{username}.
        raise PydanticCustomError("username_dots", "must contain a letter, digit, '_' or '-'")
    return value


def is_valid_username(value: str) -> bool:
    """True when `value` could be a stored username (lets lookups skip impossible names)."""
    try:
        return normalize_username(value) == value
    except PydanticCustomError:
        return False


def normalize_email(value: str) -> str:
    """Trim, validate (syntax only, no DNS) and lower-case an email address."""
    value = value.strip()
    if not value:
        raise _blank()
    if len(value) > EMAIL_MAX:
        raise _too_long(EMAIL_MAX)
    try:
        info = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise PydanticCustomError(
            "email", "is not a valid email address ({reason})", {"reason": str(exc)}
        ) from None
    # Emails are case-insensitive here: stored and looked up lower-cased.
    email = info.normalized.lower()
    if len(email) > EMAIL_MAX:
        raise _too_long(EMAIL_MAX)
    return email


def check_password(value: str) -> str:
    """Check a new password's length; passwords are used verbatim, never trimmed."""
    if not value:
        raise _blank()
    if len(value) < PASSWORD_MIN:
        raise PydanticCustomError(
            "too_short", "is too short (minimum is {minimum} characters)", {"minimum": PASSWORD_MIN}
        )
    if len(value) > PASSWORD_MAX:
        raise _too_long(PASSWORD_MAX)
    return value


def check_login_password(value: str) -> str:
    """A password to check: any non-empty text up to the hashing bound."""
    if not value:
        raise _blank()
    if len(value) > PASSWORD_MAX:
        raise _too_long(PASSWORD_MAX)
    return value


def check_bio(value: str) -> str:
    """Bio text up to `BIO_MAX` characters; empty clears it."""
    if len(value) > BIO_MAX:
        raise _too_long(BIO_MAX)
    return _no_nul(value)


def check_image(value: str) -> str:
    """An absolute http(s) URL up to `IMAGE_MAX` characters; empty clears it."""
    value = value.strip()
    if not value:
        return value
    if len(value) > IMAGE_MAX:
        raise _too_long(IMAGE_MAX)
    _no_nul(value)
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in {"http", "https"} or not parts.netloc:
        raise PydanticCustomError("url", "must be an http or https URL")
    return value


USERNAME_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": USERNAME_MAX,
    "pattern": USERNAME_PATTERN,
    "example": "jake",
}
EMAIL_SCHEMA = {
    "type": "string",
    "format": "email",
    "maxLength": EMAIL_MAX,
    "example": "jake@jake.jake",
}
NEW_PASSWORD_SCHEMA = {
    "type": "string",
    "format": "password",
    "minLength": PASSWORD_MIN,
    "maxLength": PASSWORD_MAX,
    "example": "jakejake",
}

Username = Annotated[str, AfterValidator(normalize_username), WithJsonSchema(USERNAME_SCHEMA)]
Email = Annotated[str, AfterValidator(normalize_email), WithJsonSchema(EMAIL_SCHEMA)]
NewPassword = Annotated[str, AfterValidator(check_password), WithJsonSchema(NEW_PASSWORD_SCHEMA)]
LoginPassword = Annotated[
    str,
    AfterValidator(check_login_password),
    WithJsonSchema(
        {
            "type": "string",
            "format": "password",
            "minLength": 1,
            "maxLength": PASSWORD_MAX,
            "example": "jakejake",
        }
    ),
]
Bio = Annotated[
    str,
    AfterValidator(check_bio),
    WithJsonSchema({"type": "string", "maxLength": BIO_MAX, "example": "I like to skateboard"}),
]
ImageUrl = Annotated[
    str,
    AfterValidator(check_image),
    WithJsonSchema(
        {
            "type": "string",
            "format": "uri",
            "maxLength": IMAGE_MAX,
            "example": "https://i.stack.imgur.com/xHWG8.jpg",
        }
    ),
]


class UserCreate(InModel):
    """A new account."""

    username: Username
    email: Email
    password: NewPassword


class UserCreateRequest(InModel):
    """`{"user": {"username", "email", "password"}}`."""

    user: UserCreate


class UserLogin(InModel):
    """Credentials."""

    email: Email
    password: LoginPassword


class UserLoginRequest(InModel):
    """`{"user": {"email", "password"}}`."""

    user: UserLogin


# Fields that have a value on every account: `null` cannot clear them.
_NOT_NULLABLE = ("email", "username", "password")


class UserUpdate(InModel):
    """A partial update: only the fields sent change; `null` or "" clears bio and image."""

    # Optional only in that they may be left out; `null` is rejected, so documented as strings.
    email: Annotated[Email | None, WithJsonSchema(EMAIL_SCHEMA)] = None
    username: Annotated[Username | None, WithJsonSchema(USERNAME_SCHEMA)] = None
    password: Annotated[NewPassword | None, WithJsonSchema(NEW_PASSWORD_SCHEMA)] = None
    bio: Bio | None = None
    image: ImageUrl | None = None

    @field_validator(*_NOT_NULLABLE, mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Only runs for fields that were sent: leaving a field out is how to keep it.
        if value is None:
            raise PydanticCustomError("null", "can't be null")
        return value


class UserUpdateRequest(InModel):
    """`{"user": {...}}`; at least one field is required."""

    user: UserUpdate


class UserOut(OutModel):
    """The authenticated user, with a token; absent bio and image are empty strings."""

    email: str = Field(examples=["jake@jake.jake"])
    token: str = Field(examples=["eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9..."])
    username: str = Field(examples=["jake"])
    bio: str = Field(examples=["I work at statefarm"])
    image: str = Field(examples=["https://i.stack.imgur.com/xHWG8.jpg"])

    @classmethod
    def of(cls, user: User, *, token: str) -> UserOut:
        """`user` as the owner sees it, carrying `token`."""
        return cls(
            email=user.email,
            token=token,
            username=user.username,
            bio=user.bio or "",
            image=user.image or "",
        )


class UserResponse(OutModel):
    """`{"user": {...}}`."""

    user: UserOut
