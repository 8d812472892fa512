"""Accounts: registration, login, the current user and their request/response bodies.

Validation messages are short and name no field: the error envelope names it
(`{"errors": {"username": ["can't be blank"]}}`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from service.models import User
from service.models.user import EMAIL_MAX, USERNAME_MAX
from service.schemas.common import InModel, OutModel, is_blank, no_nul

PASSWORD_MIN = 8
# Bounds the argon2 input, so a huge password cannot make hashing expensive.
PASSWORD_MAX = 256
BIO_MAX = 2000
IMAGE_MAX = 2000

# Each pattern below is both the JSON Schema `pattern` of its field and what the validator
# matches (with `fullmatch`, whose end is ECMAScript's `$`), so the document and the API agree.
# Nothing is trimmed: surrounding whitespace makes a value invalid.

# ASCII only, so that a username is one safe path segment in `/profiles/{username}`; at least
# one character other than ".", because "." and ".." would be rewritten by URL normalisation.
USERNAME_PATTERN = r"^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
_USERNAME_CHARS = re.compile(r"[A-Za-z0-9_.-]+")
_USERNAME = re.compile(USERNAME_PATTERN)

# An ASCII address: a dot-atom local part (RFC 5322) and a domain of at least two labels of
# letters, digits and inner hyphens (RFC 1035, 63 characters at most each).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_PATTERN = "^" + _ATOM + r"(?:\." + _ATOM + ")*@" + _LABEL + r"(?:\." + _LABEL + ")+$"
_EMAIL = re.compile(EMAIL_PATTERN)

# An absolute http(s) URL of printable ASCII with a non-empty authority, or "" (no image).
# No "[" or "]" in the authority: an IPv6 literal is the only valid use, and a lone bracket
# makes the URL unparsable (urllib raises "Invalid IPv6 URL"), so brackets are left out.
IMAGE_PATTERN = r"^(?:[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9._~%!$&'()*+,;=:@-]+(?:[/?#][!-~]*)?)?$"
_IMAGE = re.compile(IMAGE_PATTERN)


def _blank() -> PydanticCustomError:
    return PydanticCustomError("blank", "can't be blank")


def _too_long(maximum: int) -> PydanticCustomError:
    return PydanticCustomError(
        "too_long", "is too long (maximum is {maximum} characters)", {"maximum": maximum}
    )


def check_username(value: str) -> str:
    """Check a username's length and characters (`USERNAME_PATTERN`, 1-64 characters)."""
    if is_blank(value):
        raise _blank()
    if len(value) > USERNAME_MAX:
        raise _too_long(USERNAME_MAX)
    if not _USERNAME_CHARS.fullmatch(value):
        raise PydanticCustomError(
            "username_chars", "may contain only letters, digits, '_', '-' and '.'"
        )
    if not _USERNAME.fullmatch(value):
        raise PydanticCustomError("username_dots", "must contain a letter, digit, '_' or '-'")
    return value


def is_valid_username(value: str) -> bool:
    """True when `value` could be a stored username (lets lookups skip impossible names)."""
    return len(value) <= USERNAME_MAX and _USERNAME.fullmatch(value) is not None


def normalize_email(value: str) -> str:
    """Check an email address (`EMAIL_PATTERN`, at most 254 characters) and lower-case it."""
    if is_blank(value):
        raise _blank()
    if len(value) > EMAIL_MAX:
        raise _too_long(EMAIL_MAX)
    if not _EMAIL.fullmatch(value):
        raise PydanticCustomError("email", "is not a valid email address")
    # Emails are case-insensitive here: stored and looked up lower-cased (ASCII only, so the
    # length stays the same).
    return value.lower()


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
    """Bio text up to `BIO_MAX` characters, verbatim; empty clears it."""
    if len(value) > BIO_MAX:
        raise _too_long(BIO_MAX)
    return no_nul(value)


def check_image(value: str) -> str:
    """An http(s) URL (`IMAGE_PATTERN`) up to `IMAGE_MAX` characters; empty clears it."""
    if len(value) > IMAGE_MAX:
        raise _too_long(IMAGE_MAX)
    if not _IMAGE.fullmatch(value):
        raise PydanticCustomError("url", "must be an http or https URL")
    return value


USERNAME_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": USERNAME_MAX,
    "pattern": USERNAME_PATTERN,
    "description": "Letters, digits, '_', '-' and '.' (not only dots); unique in any case",
    "example": "jake",
}
EMAIL_SCHEMA = {
    "type": "string",
    "maxLength": EMAIL_MAX,
    "pattern": EMAIL_PATTERN,
    "description": "An ASCII email address; case-insensitive, stored lower-cased",
    "example": "jake@jake.jake",
}
NEW_PASSWORD_SCHEMA = {
    "type": "string",
    "format": "password",
    "minLength": PASSWORD_MIN,
    "maxLength": PASSWORD_MAX,
    "example": "jakejake",
}

Username = Annotated[str, AfterValidator(check_username), WithJsonSchema(USERNAME_SCHEMA)]
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
            "maxLength": IMAGE_MAX,
            "pattern": IMAGE_PATTERN,
            "description": 'An http or https URL; "" (or null) removes the image',
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
UPDATABLE = ("email", "username", "password", "bio", "image")


class UserUpdate(InModel):
    """A partial update: only the fields sent change; `null` or "" clears bio and image."""

    # At least one field must be sent (other keys are ignored, so they do not count).
    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": [name]} for name in UPDATABLE]}
    )

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


# OpenAPI examples of the models above; the views attach them to their operations.
USER_RESPONSE_EXAMPLE: dict[str, Any] = {
    "user": {
        "email": "jake@jake.jake",
        "token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "username": "jake",
        "bio": "I work at statefarm",
        "image": "",
    }
}
USER_CREATE_EXAMPLE: dict[str, Any] = {
    "user": {"username": "jake", "email": "jake@jake.jake", "password": "jakejake"}
}
USER_LOGIN_EXAMPLE: dict[str, Any] = {"user": {"email": "jake@jake.jake", "password": "jakejake"}}
USER_UPDATE_EXAMPLE: dict[str, Any] = {
    "user": {"bio": "I like to skateboard", "image": "https://example.com/j.jpg"}
}
