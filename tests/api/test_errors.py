"""Every error leaves through the envelope `{"errors": {field: [messages]}}` as JSON.

Routes that must raise live on a test-only blueprint of a second app built with `create_app`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import httpx
import pytest
import pytest_asyncio
from flask import Blueprint, Response, abort, jsonify
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import text

from service.api.spec import body_of, operation
from service.app import ConduitASGI, create_app
from service.domain import errors as domain
from service.infra.db import build_engine, db
from service.infra.settings import Settings
from tests.apps import serving
from tests.factories import TestUser
from tests.logs import JsonLines
from tests.net import free_port

MakeUser = Callable[..., Awaitable[TestUser]]


class ErrorsThing(BaseModel):
    """A test-only body."""

    name: str = Field(min_length=1)
    count: int


class ErrorsThingRequest(BaseModel):
    """RealWorld-style wrapper; the key is stripped from error fields."""

    article: ErrorsThing


DOMAIN_ERRORS: dict[str, tuple[type[domain.DomainError], int]] = {
    "invalid": (domain.InvalidInput, 422),
    "unauthenticated": (domain.NotAuthenticated, 401),
    "forbidden": (domain.PermissionDenied, 403),
    "missing": (domain.NotFound, 404),
    "conflict": (domain.Conflict, 409),
    "unavailable": (domain.ServiceUnavailable, 503),
}


def _test_blueprint(settings: Settings, admin_url: str) -> Blueprint:
    bp = Blueprint("errors_test", __name__, url_prefix="/t")

    @bp.post("/things")
    @operation(body=ErrorsThingRequest, responses={200: None}, tags=["t"])
    async def errors_create_thing() -> Response:
        """Echo a valid thing."""
        body = body_of(ErrorsThingRequest)
        return jsonify(body.model_dump())

    @bp.get("/boom")
    async def errors_boom() -> Response:
        raise RuntimeError("secret internal detail")

    @bp.get("/http-401")
    async def errors_http_401() -> Response:
        abort(401)

    @bp.get("/domain/<kind>")
    async def errors_domain(kind: str) -> Response:
        error, _ = DOMAIN_ERRORS[kind]
        raise error(f"{kind} happened", field="thing")

    @bp.get("/db-unreachable")
    async def errors_db_unreachable() -> Response:
        engine = build_engine(settings, f"postgresql+asyncpg://u:pw@127.0.0.1:{free_port()}/x")
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()
        return jsonify({})

    @bp.get("/db-lost")
    async def errors_db_lost() -> Response:
        pid = await db.session.scalar(text("SELECT pg_backend_pid()"))
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        await db.session.execute(text("SELECT 1"))
        return jsonify({})

    @bp.post("/statement-timeout")  # a write: its unit of work is a transaction (SET LOCAL)
    async def errors_statement_timeout() -> Response:
        await db.session.execute(text("SET LOCAL statement_timeout = '1ms'"))
        await db.session.execute(text("SELECT pg_sleep(0.5)"))
        return jsonify({})

    @bp.get("/sql-error")
    async def errors_sql_error() -> Response:
        await db.session.execute(text("SELECT * FROM no_such_table"))
        return jsonify({})

    @bp.get("/redis-unreachable")
    async def errors_redis_unreachable() -> Response:
        client = Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
        try:
            await client.ping()
        finally:
            await client.aclose()
        return jsonify({})

    return bp


@pytest_asyncio.fixture(scope="module")
async def errors_client(
    settings: Settings, database_url: str, app: ConduitASGI
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app that also serves the test-only routes."""
    flask_app = create_app(settings)
    flask_app.register_blueprint(_test_blueprint(settings, database_url))
    async with serving(ConduitASGI(flask_app, settings)) as http:
        yield http


@pytest.fixture
def error_log() -> Iterator[JsonLines]:
    handler = JsonLines()
    logger = logging.getLogger("conduit.errors")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def assert_envelope(response: httpx.Response, status: int, errors: dict[str, list[str]]) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"errors": errors}


async def test_unknown_route_is_404(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.get("/api/v1/nope"), 404, {"body": ["not found"]})


async def test_wrong_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.delete("/api/v1/tags")
    assert_envelope(response, 405, {"body": ["method not allowed"]})
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "OPTIONS"}


async def test_oversized_body_is_413(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.post(
        "/api/v1/users",
        content=b"{" + b" " * settings.max_body_bytes + b"}",
        headers={"content-type": "application/json"},
    )
    assert_envelope(response, 413, {"body": ["request body too large"]})


async def test_valid_body_reaches_the_view(errors_client: httpx.AsyncClient) -> None:
    response = await errors_client.post("/t/things", json={"article": {"name": "a", "count": 2}})
    assert response.status_code == 200
    assert response.json() == {"article": {"name": "a", "count": 2}}


async def test_malformed_json_is_400(errors_client: httpx.AsyncClient) -> None:
    response = await errors_client.post(
        "/t/things", content=b'{"article": {', headers={"content-type": "application/json"}
    )
    assert_envelope(response, 400, {"body": ["malformed request"]})


async def test_non_json_body_is_415(errors_client: httpx.AsyncClient) -> None:
    response = await errors_client.post(
        "/t/things",
        content=b"name=a",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_envelope(response, 415, {"body": ["unsupported media type: send application/json"]})


async def test_validation_error_names_each_field(errors_client: httpx.AsyncClient) -> None:
    response = await errors_client.post(
        "/t/things", json={"article": {"name": "", "count": "many"}}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    errors = response.json()["errors"]
    assert set(errors) == {"name", "count"}
    assert all(isinstance(m, str) for messages in errors.values() for m in messages)


async def test_missing_wrapper_is_422_naming_it(errors_client: httpx.AsyncClient) -> None:
    response = await errors_client.post("/t/things", json={"name": "a", "count": 1})
    assert response.status_code == 422
    assert set(response.json()["errors"]) == {"article"}


@pytest.mark.parametrize("kind", sorted(DOMAIN_ERRORS))
async def test_domain_errors_map_to_their_status(
    errors_client: httpx.AsyncClient, kind: str
) -> None:
    _, status = DOMAIN_ERRORS[kind]
    response = await errors_client.get(f"/t/domain/{kind}")
    assert_envelope(response, status, {"thing": [f"{kind} happened"]})


async def test_unexpected_exception_is_500_envelope_logged_with_request_id(
    errors_client: httpx.AsyncClient, error_log: JsonLines
) -> None:
    response = await errors_client.get("/t/boom", headers={"X-Request-ID": "req-500-test"})
    assert_envelope(response, 500, {"body": ["internal server error"]})
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"] == "req-500-test"
    [entry] = [line for line in error_log.lines if line["level"] == "ERROR"]
    assert entry["request_id"] == "req-500-test"
    assert "secret internal detail" in entry["exception"]


async def test_unreachable_database_is_503(errors_client: httpx.AsyncClient) -> None:
    response = await errors_client.get("/t/db-unreachable")
    assert_envelope(response, 503, {"database": ["database unavailable, try again later"]})
    assert response.headers["retry-after"] == "1"


async def test_connection_lost_mid_request_is_503_and_the_pool_recovers(
    errors_client: httpx.AsyncClient,
) -> None:
    response = await errors_client.get("/t/db-lost")
    assert_envelope(response, 503, {"database": ["database unavailable, try again later"]})
    assert (await errors_client.get("/readyz")).status_code == 200


async def test_statement_timeout_is_503(errors_client: httpx.AsyncClient) -> None:
    response = await errors_client.post("/t/statement-timeout")
    assert_envelope(response, 503, {"database": ["database unavailable, try again later"]})
    assert (await errors_client.get("/readyz")).status_code == 200


async def test_sql_error_is_500_not_503(errors_client: httpx.AsyncClient) -> None:
    response = await errors_client.get("/t/sql-error")
    assert_envelope(response, 500, {"body": ["internal server error"]})
    assert "no_such_table" not in response.text


async def test_unreachable_redis_is_503(errors_client: httpx.AsyncClient) -> None:
    response = await errors_client.get("/t/redis-unreachable")
    assert_envelope(response, 503, {"redis": ["cache unavailable, try again later"]})
    assert response.headers["retry-after"] == "1"


# --- 401 challenges (RFC 9110 §11.6.1, RFC 6750 §3) ----------------------------------------

CHALLENGE = 'Token realm="conduit", Bearer realm="conduit"'
REFUSED = (
    'Token realm="conduit", error="invalid_token", Bearer realm="conduit", error="invalid_token"'
)


async def test_401_without_credentials_names_the_schemes(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/user")
    assert_envelope(response, 401, {"token": ["authentication required"]})
    assert response.headers["www-authenticate"] == CHALLENGE


@pytest.mark.parametrize("header", ["Token not.a.jwt", "Bearer not.a.jwt", "Basic dTpw", "Token"])
async def test_401_for_a_refused_token_says_invalid_token(
    client: httpx.AsyncClient, header: str
) -> None:
    response = await client.get("/api/v1/user", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == REFUSED


async def test_401_of_a_failed_login_and_of_werkzeug_carry_the_challenge(
    client: httpx.AsyncClient, errors_client: httpx.AsyncClient
) -> None:
    login = await client.post(
        "/api/v1/users/login", json={"user": {"email": "no@one.example", "password": "wrongpass"}}
    )
    assert login.status_code == 401
    assert login.headers["www-authenticate"] == CHALLENGE
    for response in (
        await errors_client.get("/t/http-401"),
        await errors_client.get("/t/domain/unauthenticated"),
    ):
        assert_envelope(response, 401, response.json()["errors"])
        assert response.headers["www-authenticate"] == CHALLENGE


async def test_401_challenge_is_documented(client: httpx.AsyncClient) -> None:
    document = (await client.get("/api/v1/openapi.json")).json()
    unauthorized = document["paths"]["/api/v1/user"]["get"]["responses"]["401"]
    assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True


# --- nesting depth -------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"article":' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("depth", [64, 200, 253, 254, 300, 1000, 5000])
async def test_any_nesting_depth_is_a_4xx_envelope(
    client: httpx.AsyncClient, make_user: MakeUser, depth: int
) -> None:
    user = await make_user()
    response = await client.post(
        "/api/v1/articles",
        content=_nested(depth),
        headers={**user.headers, "content-type": "application/json"},
    )
    if depth < 64:
        assert response.status_code == 422
    elif depth <= 1024:
        # The wrapper object is one more level than the lists.
        assert_envelope(response, 400, {"body": ["JSON nested deeper than 64 levels"]})
    else:  # beyond orjson's own limit: not JSON it will parse
        assert_envelope(response, 400, {"body": ["malformed request"]})


async def test_depth_limit_leaves_room_and_ignores_brackets_in_strings(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    shallow = await client.post(
        "/api/v1/articles",
        content=_nested(63),
        headers={**user.headers, "content-type": "application/json"},
    )
    assert shallow.status_code == 422  # 64 levels: parsed, then refused by the schema
    article = {"title": "brackets", "description": "[" * 300, "body": "{" * 300, "tagList": []}
    created = await client.post("/api/v1/articles", json={"article": article}, headers=user.headers)
    assert created.status_code == 201, created.text
