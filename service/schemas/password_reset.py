"""Password reset by email: the request for a mail and the confirmation with its token."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from service.schemas.common import InModel, OutModel
from service.schemas.user import Email, NewPassword

# Tokens are 43 characters (32 random bytes, URL-safe base64); anything far longer is not one.
TOKEN_MAX = 256


def check_token(value: str) -> str:
    """A reset token as received: non-empty and bounded (its validity is checked later)."""
    if not value:
        raise PydanticCustomError("blank", "can't be blank")
    if len(value) > TOKEN_MAX:
        raise PydanticCustomError(
            "too_long", "is too long (maximum is {maximum} characters)", {"maximum": TOKEN_MAX}
        )
    return value


ResetToken = Annotated[
    str,
    AfterValidator(check_token),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": TOKEN_MAX,
            "description": "The token from the reset link of the mail",
            "example": "q3C1uY2qj6Jx2lQ0n0b5f8ZbqGQm0n6v9Zl3kR7wX1s",
        }
    ),
]


class PasswordResetRequest(InModel):
    """`{"email": ...}`: where to send a reset link, if an account has that address."""

    email: Email


class PasswordResetConfirm(InModel):
    """`{"token": ..., "password": ...}`: the token from the mail and the new password."""

    token: ResetToken
    password: NewPassword


class PasswordResetAccepted(OutModel):
    """`{"status": "accepted"}`: the same answer whether or not the address has an account."""

    status: Literal["accepted"] = Field(default="accepted", examples=["accepted"])


# OpenAPI examples of the models above; the views attach them to their operations.
RESET_ACCEPTED_EXAMPLE: dict[str, Any] = {"status": "accepted"}
RESET_REQUEST_EXAMPLE: dict[str, Any] = {"email": "jake@jake.jake"}
RESET_CONFIRM_EXAMPLE: dict[str, Any] = {
    "token": "q3C1uY2qj6Jx2lQ0n0b5f8ZbqGQm0n6v9Zl3kR7wX1s",
    "password": "newpass99",
}
