"""OAuth 2.0 token endpoint (RFC 6749) and token revocation (RFC 7009).

The one documented exception to the RealWorld error envelope: failures answer
`{"error", "error_description"}` (RFC 6749 §5.2). Rate limiting (429), an oversized body (413)
and unavailable dependencies (503) still answer in the envelope, like every endpoint.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ValidationError

from service.api.auth import auth
from service.api.errors import NO_STORE, oauth_error_response
from service.api.spec import operation
from service.domain import scopes as scopes_service
from service.domain.errors import OAuthError
from service.infra.db import db
from service.infra.redis import redis
from service.models import ApiClient
from service.schemas.oauth import TOKEN_EXAMPLE, RevokeRequest, TokenOut, TokenRequest
from service.services import login_guard, oauth

bp = Blueprint("oauth", __name__)

TAGS = ["OAuth 2.0"]
FORM = "application/x-www-form-urlencoded"
Form = TypeVar("Form", bound=BaseModel)


def _invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)


def _read_form(model: type[Form]) -> Form:
    """The form parameters `model` knows, each at most once (RFC 6749 §3.1), validated."""
    if request.mimetype != FORM:
        raise _invalid_request(f"send the parameters as {FORM}")
    values: dict[str, str] = {}
    for name, items in request.form.lists():
        if name not in model.model_fields:
            continue  # unknown parameters are ignored (RFC 6749 §3.1), repeated or not
        if len(items) > 1:
            raise _invalid_request(f"parameter '{name}' is repeated")
        if items[0] != "":
            values[name] = items[0]  # an empty value is an absent one (RFC 6749 §3.1)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        name = ".".join(str(part) for part in first["loc"]) or "body"
        raise _invalid_request(f"{name}: {first['msg']}") from None


@dataclass(frozen=True)
class ClientCredentials:
    """What the caller presented to authenticate as a client."""

    client_id: str
    client_secret: str


def _client_credentials(
    client_id: str | None, client_secret: str | None
) -> ClientCredentials | None:
    """HTTP Basic (RFC 6749 §2.3.1, values form-urlencoded) or body parameters, not both."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() == "basic":
        if client_id is not None or client_secret is not None:
            raise _invalid_request("use one client authentication method, not two")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError("invalid_client", oauth.INVALID_CLIENT, status=401) from None
        name, colon, secret = decoded.partition(":")
        if not colon:
            raise OAuthError("invalid_client", oauth.INVALID_CLIENT, status=401)
        if not name and not secret:
            # Swagger UI's password flow sends `Basic :` when no client is filled in.
            return None
        return ClientCredentials(unquote(name), unquote(secret))
    if client_id is None and client_secret is None:
        return None
    if client_id is None or client_secret is None:
        # A client that names itself without its secret (or the reverse) is not authenticated.
        raise OAuthError("invalid_client", "client_id and client_secret go together", status=401)
    return ClientCredentials(client_id, client_secret)


async def _client(credentials: ClientCredentials | None) -> ApiClient | None:
    if credentials is None:
        return None
    return await oauth.authenticate_client(
        session=db.session,
        client_id=credentials.client_id,
        client_secret=credentials.client_secret,
    )


def _token_response(grant: oauth.Grant, lifetime_seconds: int) -> Response:
    state = auth.state
    token = auth.tokens.issue(
        user_id=grant.user.id,
        session_id=grant.auth_session.id,
        scopes=grant.scopes,
        client_id=grant.client.client_id if grant.client is not None else None,
        lifetime=state.oauth_token_lifetime,
    )
    body = TokenOut(
        access_token=token,
        expires_in=lifetime_seconds,
        refresh_token=grant.refresh_token,
        scope=scopes_service.format_scope(grant.scopes),
    )
    response = jsonify(body.model_dump(exclude_none=True))
    response.headers.update(NO_STORE)
    return response


async def _password_grant(form: TokenRequest, client: ApiClient | None) -> oauth.Grant:
    if form.username is None or form.password is None:
        raise _invalid_request("the password grant needs username and password")
    if client is not None:
        # A client acts for its owner only: it has no business with other people's passwords.
        raise OAuthError("unauthorized_client", "API clients use the client_credentials grant")
    key = await oauth.login_key(session=db.session, username=form.username)
    await login_guard.check(redis=redis.client, email=key)
    try:
        grant = await oauth.password_grant(
            session=db.session,
            passwords=auth.passwords,
            username=form.username,
            password=form.password,
            requested=scopes_service.parse(form.scope),
            lifetime=auth.state.refresh_lifetime,
        )
    except OAuthError as exc:
        if exc.error == "invalid_scope":
            # The password was right: asking for too much is no failed sign-in.
            await login_guard.reset(redis=redis.client, email=key)
        raise
    await login_guard.reset(redis=redis.client, email=key)
    return grant


async def _refresh_grant(form: TokenRequest, client: ApiClient | None) -> oauth.Grant:
    if form.refresh_token is None:
        raise _invalid_request("the refresh_token grant needs refresh_token")
    if client is not None:
        raise OAuthError("unauthorized_client", "API clients have no refresh tokens")
    return await oauth.refresh_grant(
        session=db.session,
        token=form.refresh_token,
        requested=scopes_service.parse(form.scope),
        grace=auth.state.refresh_grace,
    )


async def _client_credentials_grant(form: TokenRequest, client: ApiClient | None) -> oauth.Grant:
    if client is None:
        raise OAuthError(
            "invalid_client", "the client_credentials grant needs client authentication", status=401
        )
    return await oauth.client_credentials_grant(
        session=db.session,
        client=client,
        requested=scopes_service.parse(form.scope),
        lifetime=auth.state.oauth_token_lifetime,
    )


GRANTS = {
    "password": _password_grant,
    "refresh_token": _refresh_grant,
    "client_credentials": _client_credentials_grant,
}


@bp.post("/oauth/token")
@operation(
    responses={200: TokenOut},
    tags=TAGS,
    form=TokenRequest,
    oauth_errors=[400, 401],
    errors=[413],
    examples={200: TOKEN_EXAMPLE},
)
async def issue_token() -> Response:
    """Get an access token (OAuth 2.0, RFC 6749).

    Form-encoded. Grants: `password` (a person's email or username and password; gives a
    refresh token), `refresh_token` (rotates it: each refresh token works once; presenting a
    used one again revokes the whole session, except within `REFRESH_REUSE_GRACE_SECONDS` of
    its use while its successor is unused, for a client that lost the response) and
    `client_credentials` (an API client, HTTP Basic preferred; acts for the client's owner
    with the client's scopes, no refresh token). `scope` may narrow what is granted, never
    widen it. Send the token as `Authorization: Bearer <access_token>`. Errors follow RFC 6749
    §5.2, not the RealWorld envelope.
    """
    form = _read_form(TokenRequest)
    handler = GRANTS.get(form.grant_type)
    if handler is None:
        raise OAuthError(
            "unsupported_grant_type", f"grant_type '{form.grant_type}' is not supported"
        )
    client = await _client(_client_credentials(form.client_id, form.client_secret))
    try:
        grant = await handler(form, client)
    except OAuthError as exc:
        if exc.commit:
            return oauth_error_response(exc)  # answered, not raised: the revocation commits
        raise
    return _token_response(grant, int(auth.state.oauth_token_lifetime.total_seconds()))


@bp.post("/oauth/revoke")
@operation(
    responses={200: None}, tags=TAGS, form=RevokeRequest, oauth_errors=[400, 401], errors=[413]
)
async def revoke_token() -> Response:
    """Revoke a token (RFC 7009).

    Form-encoded `token` (an access or a refresh token) and an optional `token_type_hint`.
    Revokes the token's whole session: its refresh token and every access token issued in it
    stop working at once. Unknown or already invalid tokens get the same 200. A caller that
    authenticates as an API client can revoke only that client's tokens.
    """
    form = _read_form(RevokeRequest)
    client = await _client(_client_credentials(form.client_id, form.client_secret))
    await oauth.revoke_token(
        session=db.session, tokens=auth.tokens, token=form.token, client=client
    )
    response = Response(status=200)
    response.headers.update(NO_STORE)
    return response
