"""`conduit users promote`: set a role from the command line, audited with no actor."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import cli
from service.app import ConduitASGI
from service.infra.db import DatabaseState
from service.infra.settings import Settings
from service.models import ROLES, AuditEntry, User
from tests.cli import cli_environment, run, unreachable_database
from tests.factories import TestUser

MakeUser = Callable[..., Awaitable[TestUser]]


@pytest.fixture(autouse=True)
def _environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Settings
) -> Iterator[None]:
    yield from cli_environment(monkeypatch, tmp_path, settings)


def maker(app: ConduitASGI) -> async_sessionmaker[AsyncSession]:
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    return state.sessionmaker


async def role_of(app: ConduitASGI, user: TestUser) -> str | None:
    async with maker(app)() as session:
        return await session.scalar(select(User.role).where(User.id == user.id))


async def audit_rows(app: ConduitASGI) -> list[AuditEntry]:
    async with maker(app)() as session:
        return list(await session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def test_role_choices_are_the_models_roles() -> None:
    assert cli.ROLES == ROLES


async def test_promote_makes_an_admin_and_audits_it(
    app: ConduitASGI, make_user: MakeUser, capsys: pytest.CaptureFixture[str]
) -> None:
    jake = await make_user(username="jake")
    assert await run("users", "promote", "JAKE", "--role", "admin") == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("jake: role user -> admin\n", "")
    assert await role_of(app, jake) == "admin"
    [entry] = await audit_rows(app)
    assert (entry.actor_id, entry.action, entry.target_type, entry.target_id) == (
        None,
        "user.role_change",
        "user",
        "jake",
    )
    assert entry.details == '{"from":"user","to":"admin","via":"cli"}'


async def test_promote_to_the_same_role_changes_nothing(
    app: ConduitASGI, make_user: MakeUser, capsys: pytest.CaptureFixture[str]
) -> None:
    await make_user(username="jake")
    assert await run("users", "promote", "jake", "--role", "user") == 0
    assert capsys.readouterr().out == "jake: role is already user\n"
    assert await audit_rows(app) == []


async def test_promote_unknown_user_is_one_line_and_exit_1(
    app: ConduitASGI, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run("users", "promote", "ghost", "--role", "admin") == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", "conduit: no user named 'ghost'\n")
    assert await audit_rows(app) == []


async def test_the_last_admin_cannot_be_demoted_from_the_command_line(
    app: ConduitASGI, make_user: MakeUser, capsys: pytest.CaptureFixture[str]
) -> None:
    boss = await make_user(username="boss")
    async with maker(app)() as session:
        await session.execute(update(User).where(User.id == boss.id).values(role="admin"))
        await session.commit()
    assert await run("users", "promote", "boss", "--role", "moderator") == 1
    assert capsys.readouterr().err == "conduit: boss: at least one active admin must remain\n"
    assert await role_of(app, boss) == "admin"


def test_promote_needs_a_known_role(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["users", "promote", "jake", "--role", "root"])
    assert exited.value.code == 2
    assert "invalid choice: 'root'" in capsys.readouterr().err


def test_promote_unreachable_database_is_one_masked_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = unreachable_database(monkeypatch)
    assert cli.main(["users", "promote", "jake", "--role", "admin"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        f"conduit: database unreachable at postgresql+asyncpg://app:***@127.0.0.1:{port}/conduit"
    )
    assert "hunter2" not in err
