"""Scopes, deny by default: every authenticated route names the scope it needs (shown in
OpenAPI as `x-required-scope`), and a token without it gets 403 before anything else runs."""

from __future__ import annotations

import re
from typing import Any

import httpx

from service.app import ConduitASGI
from service.domain import scopes
from tests.api.v1.test_oauth import MakeUser, bearer, password_grant

OPENAPI = "/api/v1/openapi.json"
# The operations anyone may call without a token; a new route is authenticated unless it
# is added here on purpose.
ANONYMOUS = {
    # The API index (links to the docs and the endpoints).
    ("GET", "/"),
    ("GET", "/api/v1"),
    ("POST", "/api/v1/users"),
    ("POST", "/api/v1/users/login"),
    ("POST", "/api/v1/users/password-reset"),
    ("POST", "/api/v1/users/password-reset/confirm"),
    ("POST", "/api/v1/oauth/token"),
    ("POST", "/api/v1/oauth/revoke"),
    ("GET", "/api/v1/tags"),
    # The catalogue of webhook event types is public documentation.
    ("GET", "/api/v1/webhooks/event-types"),
}
# Routes outside the API operations: the documentation pages and their assets.
UNDOCUMENTED = re.compile(r"^/api/v1/(openapi\.json|docs|redoc)(/|$)")
# Path parameters without a documented example.
PATH_VALUES = {"username": "nobody", "client_id": "cl_nosuchclient"}
LOGOUT = ("POST", "/api/v1/users/logout")


async def operations(client: httpx.AsyncClient) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) of every operation of the OpenAPI document."""
    response = await client.get(OPENAPI)
    assert response.status_code == 200
    document = response.json()
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def concrete(path: str, operation: dict[str, Any]) -> str:
    """`path` with each parameter replaced by a value its route matches (the documented
    example, else a made-up one)."""
    values = {
        parameter["name"]: str(parameter["schema"].get("example", ""))
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "path"
    }

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        return values.get(name) or PATH_VALUES.get(name, "1")

    return re.sub(r"\{(\w+)\}", value, path)


async def call(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    operation: dict[str, Any],
    headers: dict[str, str],
) -> httpx.Response:
    body: dict[str, Any] | None = {} if method in {"POST", "PUT", "PATCH"} else None
    return await client.request(method, concrete(path, operation), json=body, headers=headers)


async def test_every_scoped_route_refuses_a_token_without_its_scope(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    # An admin, so that only the scope (not the role) can be what is missing.
    boss = await make_user(username="boss", role="admin")
    found = [
        (method, path, operation)
        for method, path, operation in await operations(client)
        if "x-required-scope" in operation
    ]
    required = {operation["x-required-scope"] for _, _, operation in found}
    assert required <= scopes.ALL
    assert required >= scopes.ALL - {scopes.WEBHOOKS_MANAGE}
    # One token per scope, holding every other scope (password grant with a narrowed scope).
    lacking = {
        scope: (await password_grant(client, boss, scope=" ".join(sorted(scopes.ALL - {scope}))))[
            "access_token"
        ]
        for scope in required
    }

    for method, path, operation in found:
        scope = operation["x-required-scope"]
        response = await call(client, method, path, operation, bearer(lacking[scope]))

        assert response.status_code == 403, (method, path, response.text)
        assert response.json() == {"errors": {"scope": [f"token lacks the '{scope}' scope"]}}, (
            method,
            path,
        )


async def test_a_token_with_the_scope_gets_past_the_scope_check(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    boss = await make_user(username="boss", role="admin")
    found = [
        (method, path, operation)
        for method, path, operation in await operations(client)
        if "x-required-scope" in operation
    ]
    # One token per scope, holding only that scope.
    only = {
        scope: (await password_grant(client, boss, scope=scope))["access_token"]
        for scope in {operation["x-required-scope"] for _, _, operation in found}
    }
    # Logout last: it ends the session of the token.
    found.sort(key=lambda op: (op[0], op[1]) == LOGOUT)
    assert (found[-1][0], found[-1][1]) == LOGOUT

    for method, path, operation in found:
        value = only[operation["x-required-scope"]]

        response = await call(client, method, path, operation, bearer(value))

        assert response.status_code not in {401, 403}, (method, path, response.text)


async def test_optional_auth_routes_still_check_the_scope_of_a_token_sent(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    writer = await password_grant(client, jake, scope="articles:write")

    anonymous = await client.get("/api/v1/articles")
    denied = await client.get("/api/v1/articles", headers=bearer(writer["access_token"]))

    assert anonymous.status_code == 200
    assert denied.status_code == 403
    assert denied.json() == {"errors": {"scope": ["token lacks the 'articles:read' scope"]}}


async def test_the_scope_check_comes_before_the_body_and_the_resource(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    reader = await password_grant(client, jake, scope="articles:read")
    headers = bearer(reader["access_token"])

    malformed = await client.post(
        "/api/v1/articles",
        content=b"{not json",
        headers={**headers, "Content-Type": "application/json"},
    )
    missing = await client.delete("/api/v1/articles/does-not-exist", headers=headers)

    assert malformed.status_code == 403
    assert missing.status_code == 403


async def test_no_authenticated_operation_lacks_a_required_scope(
    client: httpx.AsyncClient,
) -> None:
    anonymous = set()
    for method, path, operation in await operations(client):
        security = operation["security"]
        if security == []:
            assert "x-required-scope" not in operation, (method, path)
            anonymous.add((method, path))
            continue
        scope = operation.get("x-required-scope")
        assert scope in scopes.ALL, (method, path)
        assert security[0] == {"OAuth2": [scope]}, (method, path)
        assert f"`{scope}`" in operation["description"], (method, path)
        assert {"401", "403"} <= set(operation["responses"]), (method, path)

    assert anonymous == ANONYMOUS


async def test_every_api_route_is_a_documented_operation(app: ConduitASGI) -> None:
    flask_app = app.flask_app
    for rule in flask_app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or UNDOCUMENTED.match(rule.rule):
            continue
        view = flask_app.view_functions[rule.endpoint]
        meta = getattr(view, "conduit_meta", None)
        assert meta is not None, f"{rule.rule} does not go through operation()"
        if meta["auth"] != "none":
            assert meta["scope"] in scopes.ALL, rule.rule


async def test_the_documented_oauth_flows_list_the_scopes(client: httpx.AsyncClient) -> None:
    document = (await client.get(OPENAPI)).json()
    flows = document["components"]["securitySchemes"]["OAuth2"]["flows"]

    assert set(flows["password"]["scopes"]) == scopes.ALL
    assert set(flows["clientCredentials"]["scopes"]) == scopes.ALL - {scopes.CLIENTS_MANAGE}
    assert flows["password"]["tokenUrl"] == "/api/v1/oauth/token"
