"""`conduit webhooks`: re-encrypting the stored signing secrets, and a key for them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet

from service import cli
from service.infra.secret_box import SecretBox, generate_key
from service.infra.settings import Settings
from service.webhooks.signing import generate_secret
from tests.cli import cli_environment, run, unreachable_database
from tests.factories import TestUser
from tests.webhooks.support import Sessions, add_endpoint, sql

OLD, NEW = generate_key(), generate_key()


@pytest.fixture(autouse=True)
def _environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Settings
) -> Iterator[None]:
    monkeypatch.delenv("WEBHOOK_SECRET_KEYS", raising=False)
    yield from cli_environment(monkeypatch, tmp_path, settings)


async def test_reencrypt_secrets_rotates_the_key_and_prints_the_counts(
    owner: TestUser,
    sessionmaker: Sessions,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secrets = [generate_secret() for _ in range(3)]
    for n, secret in enumerate(secrets):
        # One from before encryption, two sealed with the old key.
        stored = secret if n == 0 else SecretBox([OLD]).seal(secret)
        await add_endpoint(
            sessionmaker, owner_id=owner.id, url=f"https://hooks.example.com/{n}", secret=stored
        )
    monkeypatch.setenv("WEBHOOK_SECRET_KEYS", f"{NEW},{OLD}")
    assert await run("webhooks", "reencrypt-secrets", "--batch-size", "2") == 0
    out, err = capsys.readouterr()
    assert out == (
        "webhook secrets: 3 re-encrypted with the first key, 0 already current, "
        "0 expired previous secret(s) dropped\n"
    )
    assert err == ""
    rows = await sql(database_url, "SELECT secret FROM webhook_endpoints ORDER BY url")
    assert [SecretBox([NEW]).open(row["secret"]) for row in rows] == secrets
    for secret in secrets:
        assert all(secret not in row["secret"] for row in rows)

    assert await run("webhooks", "reencrypt-secrets") == 0
    assert capsys.readouterr().out.startswith("webhook secrets: 0 re-encrypted with the first key")


async def test_reencrypt_secrets_fails_naming_endpoints_no_key_opens(
    owner: TestUser,
    sessionmaker: Sessions,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = generate_secret()
    lost = await add_endpoint(
        sessionmaker,
        owner_id=owner.id,
        url="https://hooks.example.com/lost",
        secret=SecretBox([OLD]).seal(secret),
    )
    monkeypatch.setenv("WEBHOOK_SECRET_KEYS", NEW)  # the old key dropped too early
    assert await run("webhooks", "reencrypt-secrets") == 1
    out, err = capsys.readouterr()
    assert "1 endpoint(s) unreadable" in out
    [line] = err.splitlines()
    assert line.startswith("conduit: no key of WEBHOOK_SECRET_KEYS opens the secret of 1 ")
    assert line.endswith(str(lost.id))
    for text in (OLD, NEW, secret):
        assert text not in out + err


async def test_reencrypt_secrets_waits_for_a_rotation_in_progress_and_stops_in_one_line(
    owner: TestUser,
    sessionmaker: Sessions,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stored = SecretBox([OLD]).seal(generate_secret())
    await add_endpoint(
        sessionmaker, owner_id=owner.id, url="https://hooks.example.com/busy", secret=stored
    )
    monkeypatch.setenv("WEBHOOK_SECRET_KEYS", f"{NEW},{OLD}")
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "300")
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            # What a secret rotation holds while it runs: the command waits for it, never
            # overwrites it; here it waits past the statement timeout.
            await holder.execute("SELECT 1 FROM webhook_endpoints FOR UPDATE")
            assert await run("webhooks", "reencrypt-secrets") == 1
    finally:
        await holder.close()
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("conduit: re-encryption stopped: ")
    assert "statement timeout" in line
    assert [
        row["secret"] for row in await sql(database_url, "SELECT secret FROM webhook_endpoints")
    ] == [stored]


async def test_reencrypt_secrets_without_keys_uses_the_development_key(
    owner: TestUser, sessionmaker: Sessions, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url="https://hooks.example.com/dev")
    assert await run("webhooks", "reencrypt-secrets") == 0
    assert capsys.readouterr().out.startswith("webhook secrets: 1 re-encrypted")
    assert (tmp_path / "data" / "webhook_secret_keys").exists()


async def test_reencrypt_secrets_reports_an_unreachable_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    unreachable_database(monkeypatch)
    assert await run("webhooks", "reencrypt-secrets") == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("conduit: ")
    assert "hunter2" not in err


def test_production_without_keys_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", "cli-webhooks-secret-" + "w" * 32)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    assert cli.main(["webhooks", "reencrypt-secrets"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(
        "conduit: invalid configuration: WEBHOOK_SECRET_KEYS must be set in production"
    )


def test_generate_key_prints_a_usable_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["webhooks", "generate-key"]) == 0
    key = capsys.readouterr().out.strip()
    Fernet(key)
    assert SecretBox([key]).open(SecretBox([key]).seal("whsec_x")) == "whsec_x"


def test_batch_size_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["webhooks", "reencrypt-secrets", "--batch-size", "0"])
    assert caught.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
