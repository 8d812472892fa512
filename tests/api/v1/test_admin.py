"""Administration endpoints: users, roles, suspension, the audit log, and who may call them."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jsonschema_rs
import pytest
from sqlalchemy import select, update

from service.app import ConduitASGI
from service.infra.db import DatabaseState
from service.models import AuditEntry, AuthSession, User
from service.services.admin import LAST_ADMIN, SELF_SUSPEND
from tests.factories import TestUser

MakeUser = Callable[..., Awaitable[TestUser]]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ROLE_DENIED = {"errors": {"role": ["requires one of: admin"]}}
# Once operations require OAuth scopes, a plain user's token is refused for lacking `admin`.
SCOPE_DENIED = {"errors": {"scope": ["token lacks the 'admin' scope"]}}


def sessionmaker(app: ConduitASGI) -> Any:
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    return state.sessionmaker


async def set_user(app: ConduitASGI, user: TestUser, **values: Any) -> None:
    async with sessionmaker(app)() as session:
        await session.execute(update(User).where(User.id == user.id).values(**values))
        await session.commit()


async def user_with_role(app: ConduitASGI, make_user: MakeUser, role: str, **kw: Any) -> TestUser:
    return await make_user(role=role, **kw)


async def db_user(app: ConduitASGI, user: TestUser) -> User:
    async with sessionmaker(app)() as session:
        row = await session.get(User, user.id)
        assert row is not None
        return row


async def audit_rows(app: ConduitASGI) -> list[AuditEntry]:
    async with sessionmaker(app)() as session:
        return list(await session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


async def patch(
    client: httpx.AsyncClient, actor: TestUser, username: str, body: Any
) -> httpx.Response:
    return await client.patch(
        f"/api/v1/admin/users/{username}", json={"user": body}, headers=actor.headers
    )


@pytest.fixture
async def admin(app: ConduitASGI, make_user: MakeUser) -> TestUser:
    return await user_with_role(app, make_user, "admin", username="boss")


# --- listing users -------------------------------------------------------------------------


async def test_list_users_shape_newest_first(
    client: httpx.AsyncClient, admin: TestUser, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake", email="Jake@Jake.Jake")
    response = await client.get("/api/v1/admin/users", headers=admin.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["usersCount"] == 2
    assert [user["username"] for user in body["users"]] == ["jake", "boss"]
    first = body["users"][0]
    assert TIMESTAMP.match(first.pop("createdAt"))
    assert first == {
        "username": "jake",
        "email": jake.email,
        "role": "user",
        "suspended": False,
    }
    assert body["users"][1]["role"] == "admin"


async def test_list_users_paging(
    client: httpx.AsyncClient, admin: TestUser, make_user: MakeUser
) -> None:
    for n in range(4):
        await make_user(username=f"u{n}")
    response = await client.get(
        "/api/v1/admin/users", params={"limit": 2, "offset": 1}, headers=admin.headers
    )
    assert response.status_code == 200
    body = response.json()
    assert body["usersCount"] == 5
    assert [user["username"] for user in body["users"]] == ["u2", "u1"]


async def test_list_users_filters_by_role_and_status(
    app: ConduitASGI, client: httpx.AsyncClient, admin: TestUser, make_user: MakeUser
) -> None:
    await user_with_role(app, make_user, "moderator", username="mod")
    gone = await make_user(username="gone")
    await set_user(app, gone, suspended=True)
    await make_user(username="plain")

    async def names(**params: str) -> list[str]:
        response = await client.get("/api/v1/admin/users", params=params, headers=admin.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["usersCount"] == len(body["users"])
        return [user["username"] for user in body["users"]]

    assert await names(role="moderator") == ["mod"]
    assert await names(role="admin") == ["boss"]
    assert await names(role="user") == ["plain", "gone"]
    assert await names(status="suspended") == ["gone"]
    assert await names(status="active") == ["plain", "mod", "boss"]
    assert await names(role="user", status="active") == ["plain"]
    # An empty search is no filter.
    assert await names(q="") == ["plain", "gone", "mod", "boss"]


async def test_list_users_search_matches_username_or_email_in_any_case(
    client: httpx.AsyncClient, admin: TestUser, make_user: MakeUser
) -> None:
    await make_user(username="Dragon_Rider", email="rider@example.com")
    await make_user(username="knight", email="dragonslayer@example.org")
    await make_user(username="farmer", email="farmer@example.com")

    async def search(q: str) -> list[str]:
        response = await client.get("/api/v1/admin/users", params={"q": q}, headers=admin.headers)
        assert response.status_code == 200, response.text
        return sorted(user["username"] for user in response.json()["users"])

    assert await search("DRAGON") == ["Dragon_Rider", "knight"]
    assert await search("example.org") == ["knight"]
    assert await search("zzz") == []


async def test_list_users_search_treats_like_wildcards_literally(
    client: httpx.AsyncClient, admin: TestUser, make_user: MakeUser
) -> None:
    await make_user(username="a_b", email="ab@example.com")
    await make_user(username="axb", email="axb@example.com")
    await make_user(username="deal", email="100%off@example.com")
    await make_user(username="plain", email="plain@example.com")

    async def search(q: str) -> list[str]:
        response = await client.get("/api/v1/admin/users", params={"q": q}, headers=admin.headers)
        assert response.status_code == 200, response.text
        return sorted(user["username"] for user in response.json()["users"])

    # Unescaped, "_" would match every name and "%" every row.
    assert await search("_") == ["a_b"]
    assert await search("a_b") == ["a_b"]
    assert await search("%") == ["deal"]
    assert await search("0%o") == ["deal"]
    # The escape character itself is literal too (and matches nothing here).
    assert await search("\\") == []
    assert await search("a\\_b") == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"role": "boss"}, "role"),
        ({"role": ""}, "role"),
        ({"status": "banned"}, "status"),
        ({"status": ""}, "status"),
        ({"limit": "0"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"q": "a\x00b"}, "q"),
    ],
)
async def test_list_users_rejects_bad_queries(
    client: httpx.AsyncClient, admin: TestUser, params: dict[str, str], field: str
) -> None:
    response = await client.get("/api/v1/admin/users", params=params, headers=admin.headers)
    assert response.status_code == 422
    assert list(response.json()["errors"]) == [field]


# --- changing users ------------------------------------------------------------------------


async def test_patch_role_answers_the_admin_view_and_audits(
    app: ConduitASGI, client: httpx.AsyncClient, admin: TestUser, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    # Usernames match in any case, as everywhere in the API.
    response = await patch(client, admin, "JAKE", {"role": "moderator"})
    assert response.status_code == 200, response.text
    user = response.json()["user"]
    assert TIMESTAMP.match(user.pop("createdAt"))
    assert user == {
        "username": "jake",
        "email": jake.email,
        "role": "moderator",
        "suspended": False,
    }
    assert (await db_user(app, jake)).role == "moderator"
    [entry] = await audit_rows(app)
    assert (entry.actor_id, entry.action, entry.target_type, entry.target_id) == (
        admin.id,
        "user.role_change",
        "user",
        "jake",
    )
    assert entry.details == '{"from":"user","to":"moderator","via":"api"}'


async def test_suspend_revokes_sessions_and_unsuspend_restores(
    app: ConduitASGI, client: httpx.AsyncClient, admin: TestUser, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    other = await make_user(username="other")
    expires = datetime.now(UTC) + timedelta(days=1)
    async with sessionmaker(app)() as session:
        for owner in (jake, jake, other):
            session.add(
                AuthSession(
                    id=uuid.uuid4(), user_id=owner.id, scope="profile:read", expires_at=expires
                )
            )
        await session.commit()

    response = await patch(client, admin, "jake", {"suspended": True})
    assert response.status_code == 200, response.text
    assert response.json()["user"]["suspended"] is True
    assert (await db_user(app, jake)).suspended is True
    async with sessionmaker(app)() as session:
        rows = (
            await session.execute(select(AuthSession.user_id, AuthSession.revoked_reason))
        ).all()
    # Each user also has the session of their factory-made token.
    assert sorted(rows) == sorted(
        [(jake.id, "suspended")] * 3 + [(other.id, None)] * 2 + [(admin.id, None)]
    )

    response = await patch(client, admin, "jake", {"suspended": False})
    assert response.status_code == 200, response.text
    assert response.json()["user"]["suspended"] is False
    assert (await db_user(app, jake)).suspended is False

    entries = await audit_rows(app)
    assert [(e.action, e.target_id, e.details) for e in entries] == [
        ("user.suspend", "jake", '{"revokedSessions":3,"via":"api"}'),
        ("user.unsuspend", "jake", '{"via":"api"}'),
    ]


async def test_role_and_suspension_in_one_request_make_two_entries(
    app: ConduitASGI, client: httpx.AsyncClient, admin: TestUser, make_user: MakeUser
) -> None:
    await make_user(username="jake")
    response = await patch(client, admin, "jake", {"role": "moderator", "suspended": True})
    assert response.status_code == 200, response.text
    assert (response.json()["user"]["role"], response.json()["user"]["suspended"]) == (
        "moderator",
        True,
    )
    assert [e.action for e in await audit_rows(app)] == ["user.role_change", "user.suspend"]


async def test_a_patch_that_changes_nothing_is_not_audited(
    app: ConduitASGI, client: httpx.AsyncClient, admin: TestUser, make_user: MakeUser
) -> None:
    await make_user(username="jake")
    response = await patch(client, admin, "jake", {"role": "user", "suspended": False})
    assert response.status_code == 200
    assert await audit_rows(app) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"role": "boss"}, "role"),
        ({"role": None}, "role"),
        ({"suspended": "true"}, "suspended"),
        ({"suspended": 1}, "suspended"),
        ({"suspended": None}, "suspended"),
    ],
)
async def test_patch_rejects_bad_bodies(
    app: ConduitASGI,
    client: httpx.AsyncClient,
    admin: TestUser,
    make_user: MakeUser,
    body: dict[str, Any],
    field: str,
) -> None:
    await make_user(username="jake")
    response = await patch(client, admin, "jake", body)
    assert response.status_code == 422
    assert list(response.json()["errors"]) == [field]
    assert await audit_rows(app) == []


async def test_patch_body_schema_agrees_with_the_api(
    client: httpx.AsyncClient, admin: TestUser, make_user: MakeUser
) -> None:
    await make_user(username="jake")
    document = (await client.get("/api/v1/openapi.json")).json()
    schema = {
        **document["components"]["schemas"]["AdminUserUpdate"],
        "components": document["components"],
    }
    validator = jsonschema_rs.Draft202012Validator(schema)
    bodies: list[dict[str, Any]] = [
        {},
        {"other": 1},
        {"role": "admin"},
        {"role": "root"},
        {"role": None},
        {"role": ""},
        {"suspended": True},
        {"suspended": False, "other": 1},
        {"suspended": "true"},
        {"suspended": 1},
        {"suspended": None},
        {"role": "user", "suspended": False},
    ]
    for body in bodies:
        response = await patch(client, admin, "jake", body)
        assert response.status_code in (200, 422), response.text
        assert validator.is_valid(body) == (response.status_code == 200), body


async def test_patch_unknown_user_is_404(client: httpx.AsyncClient, admin: TestUser) -> None:
    for name in ("ghost", "no%20such%20name"):
        response = await patch(client, admin, name, {"role": "admin"})
        assert response.status_code == 404
        assert response.json() == {"errors": {"user": ["user not found"]}}


async def test_the_last_admin_cannot_be_demoted_or_suspended(
    app: ConduitASGI, client: httpx.AsyncClient, admin: TestUser
) -> None:
    for body in ({"role": "moderator"}, {"role": "user"}, {"suspended": True}):
        response = await patch(client, admin, "boss", body)
        assert response.status_code == 409, body
        assert response.json() == {"errors": {"role": [LAST_ADMIN]}}
    assert (await db_user(app, admin)).role == "admin"
    assert await audit_rows(app) == []


async def test_suspended_admins_do_not_count_as_remaining(
    app: ConduitASGI, client: httpx.AsyncClient, admin: TestUser, make_user: MakeUser
) -> None:
    other = await user_with_role(app, make_user, "admin", username="other")
    response = await patch(client, admin, "other", {"suspended": True})
    assert response.status_code == 200, response.text
    response = await patch(client, admin, "boss", {"role": "user"})
    assert response.status_code == 409
    assert response.json() == {"errors": {"role": [LAST_ADMIN]}}
    # Demoting the suspended admin removes no active admin.
    response = await patch(client, admin, "other", {"role": "user"})
    assert response.status_code == 200
    assert (await db_user(app, other)).role == "user"


async def test_an_admin_may_step_down_while_another_remains(
    app: ConduitASGI, client: httpx.AsyncClient, admin: TestUser, make_user: MakeUser
) -> None:
    await user_with_role(app, make_user, "admin", username="other")
    response = await patch(client, admin, "boss", {"role": "moderator"})
    assert response.status_code == 200
    assert (await db_user(app, admin)).role == "moderator"
    # No longer an admin: the next admin call is refused.
    response = await client.get("/api/v1/admin/users", headers=admin.headers)
    assert response.status_code == 403


async def test_an_admin_cannot_suspend_themselves(
    app: ConduitASGI, client: httpx.AsyncClient, admin: TestUser, make_user: MakeUser
) -> None:
    await user_with_role(app, make_user, "admin", username="other")
    response = await patch(client, admin, "boss", {"suspended": True})
    assert response.status_code == 409
    assert response.json() == {"errors": {"suspended": [SELF_SUSPEND]}}
    assert (await db_user(app, admin)).suspended is False


async def test_concurrent_demotions_of_the_only_two_admins_leave_one(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    for round_ in range(5):
        first = await user_with_role(app, make_user, "admin", username=f"first{round_}")
        second = await user_with_role(app, make_user, "admin", username=f"second{round_}")
        responses = await asyncio.gather(
            patch(client, first, second.username, {"role": "user"}),
            patch(client, second, first.username, {"role": "user"}),
        )
        winners = [r for r in responses if r.status_code == 200]
        [loser] = [r for r in responses if r.status_code != 200]
        assert len(winners) == 1, [r.text for r in responses]
        # Refused under the lock (409), or, when the winner committed before the loser's
        # request began, as a caller who is no longer an admin (403).
        assert (loser.status_code, loser.json()) in (
            (409, {"errors": {"role": [LAST_ADMIN]}}),
            (403, ROLE_DENIED),
        )
        roles = sorted([(await db_user(app, first)).role, (await db_user(app, second)).role])
        assert roles == ["admin", "user"]
        # The survivor must not count as a third admin in the next round.
        await set_user(app, first, role="user")
        await set_user(app, second, role="user")


# --- the audit log -------------------------------------------------------------------------


async def test_audit_log_lists_entries_newest_first_with_filters(
    app: ConduitASGI, client: httpx.AsyncClient, admin: TestUser, make_user: MakeUser
) -> None:
    await make_user(username="jake")
    await make_user(username="anna")
    for body in ({"role": "moderator"}, {"suspended": True}):
        assert (await patch(client, admin, "jake", body)).status_code == 200
    assert (await patch(client, admin, "anna", {"role": "moderator"})).status_code == 200

    response = await client.get("/api/v1/admin/audit", headers=admin.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["entriesCount"] == 3
    newest = body["entries"][0]
    assert TIMESTAMP.match(newest.pop("createdAt"))
    assert isinstance(newest.pop("id"), int)
    assert newest == {
        "actor": "boss",
        "action": "user.role_change",
        "targetType": "user",
        "targetId": "anna",
        "details": {"from": "user", "to": "moderator", "via": "api"},
    }
    assert [(e["action"], e["targetId"]) for e in body["entries"][1:]] == [
        ("user.suspend", "jake"),
        ("user.role_change", "jake"),
    ]
    ids = [e["id"] for e in body["entries"][1:]]
    assert ids == sorted(ids, reverse=True)

    async def listed(**params: Any) -> tuple[int, list[str]]:
        response = await client.get("/api/v1/admin/audit", params=params, headers=admin.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        return body["entriesCount"], [f"{e['action']} {e['targetId']}" for e in body["entries"]]

    assert await listed(action="user.suspend") == (1, ["user.suspend jake"])
    assert await listed(actor="BOSS", limit=1, offset=1) == (3, ["user.suspend jake"])
    assert await listed(actor="nobody") == (0, [])
    assert await listed(actor="not a name!") == (0, [])
    assert await listed(action="user.delete") == (0, [])


async def test_audit_entries_of_the_command_line_have_no_actor(
    app: ConduitASGI, client: httpx.AsyncClient, admin: TestUser
) -> None:
    async with sessionmaker(app)() as session:
        session.add(
            AuditEntry(
                action="user.role_change", target_type="user", target_id="boss", details=None
            )
        )
        await session.commit()
    response = await client.get("/api/v1/admin/audit", headers=admin.headers)
    [entry] = response.json()["entries"]
    assert (entry["actor"], entry["details"]) == (None, {})


@pytest.mark.parametrize(
    ("params", "field"), [({"limit": "101"}, "limit"), ({"actor": "\x00"}, "actor")]
)
async def test_audit_rejects_bad_queries(
    client: httpx.AsyncClient, admin: TestUser, params: dict[str, str], field: str
) -> None:
    response = await client.get("/api/v1/admin/audit", params=params, headers=admin.headers)
    assert response.status_code == 422
    assert list(response.json()["errors"]) == [field]


# --- who may call them ---------------------------------------------------------------------


def admin_routes(app: ConduitASGI) -> list[tuple[str, str]]:
    """Every (method, rule) the app serves under /api/v1/admin, found in the URL map."""
    routes = []
    for rule in app.flask_app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/admin"):
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                routes.append((method, rule.rule))
    return routes


def request_for(method: str, rule: str, target: str) -> dict[str, Any]:
    url = re.sub(r"<(?:[^:<>]+:)?username>", target, rule)
    assert "<" not in url, f"no test value for a parameter of {rule}"
    # A valid body that would make the caller an admin, were it accepted.
    body = (
        {"user": {"role": "admin", "suspended": False}}
        if method in {"PATCH", "PUT", "POST"}
        else None
    )
    return {"method": method, "url": url, "json": body}


async def test_every_admin_route_refuses_plain_users_moderators_and_anonymous(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    routes = admin_routes(app)
    assert {
        ("GET", "/api/v1/admin/users"),
        ("PATCH", "/api/v1/admin/users/<username>"),
        ("GET", "/api/v1/admin/audit"),
    } <= set(routes)
    plain = await make_user(username="plain")
    moderator = await user_with_role(app, make_user, "moderator", username="mod")

    for method, rule in routes:
        for caller in (plain, moderator):
            response = await client.request(
                **request_for(method, rule, caller.username), headers=caller.headers
            )
            assert response.status_code == 403, (method, rule, caller.username)
            assert response.json() in (ROLE_DENIED, SCOPE_DENIED), response.text
        response = await client.request(**request_for(method, rule, "plain"))
        assert response.status_code == 401, (method, rule)

    assert (await db_user(app, plain)).role == "user"
    assert (await db_user(app, moderator)).role == "moderator"
    assert await audit_rows(app) == []


async def test_admin_routes_are_documented(client: httpx.AsyncClient) -> None:
    document = (await client.get("/api/v1/openapi.json")).json()
    operations = {
        (path, method): operation
        for path, item in document["paths"].items()
        if path.startswith("/api/v1/admin")
        for method, operation in item.items()
    }
    assert set(operations) == {
        ("/api/v1/admin/users", "get"),
        ("/api/v1/admin/users/{username}", "patch"),
        ("/api/v1/admin/audit", "get"),
    }
    for operation in operations.values():
        assert operation["tags"] == ["Admin"]
        assert {"401", "403"} <= set(operation["responses"])
        assert operation["responses"]["200"]["content"]["application/json"]["example"]
    patch_op = operations[("/api/v1/admin/users/{username}", "patch")]
    assert {"404", "409", "422"} <= set(patch_op["responses"])
    assert patch_op["requestBody"]["content"]["application/json"]["example"] == {
        "user": {"role": "moderator"}
    }
