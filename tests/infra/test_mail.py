"""Outgoing mail: SMTP to a real local server (aiosmtpd), the development mail folder, and
the refusal to pretend in production."""

from __future__ import annotations

import logging
import socket
import stat
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from service.infra.mail import Mailer, MailError, MailNotConfigured, MailRejected, SmtpConfig
from service.infra.secret_box import generate_key
from service.infra.settings import Environment, Settings
from tests.jobs.support import SmtpServer, running_smtp_server
from tests.net import free_port

SECRET_LINK = "https://conduit.example/reset-password?token=s3cr3t-t0ken"
STRONG_SECRET = "mail-test-secret-" + "m" * 32


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with running_smtp_server() as server:
        yield server


def mail_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "app_env": Environment.TEST,
        "data_dir": tmp_path / "data",
        "mail_from": "Conduit <no-reply@conduit.example>",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def test_smtp_delivers_the_message(tmp_path: Path, smtp_server: SmtpServer) -> None:
    mailer = Mailer(mail_settings(tmp_path, smtp_url=smtp_server.url))
    await mailer.send("jake@jake.jake", "Hello", f"Open {SECRET_LINK}\n")

    [mail] = await smtp_server.wait_for(1)
    assert mail.sender == "no-reply@conduit.example"
    assert mail.recipients == ["jake@jake.jake"]
    assert mail.message["From"] == "Conduit <no-reply@conduit.example>"
    assert mail.message["To"] == "jake@jake.jake"
    assert mail.message["Subject"] == "Hello"
    assert mail.message["Message-ID"].endswith("@conduit.example>")
    assert mail.message["Date"]
    assert mail.text == f"Open {SECRET_LINK}\n"
    assert not (tmp_path / "data" / "mail").exists()


async def test_smtp_login_with_credentials_from_the_url(tmp_path: Path) -> None:
    with running_smtp_server(with_auth=True) as server:
        url = f"smtp://mailer%40conduit:p%40ss%3Aword@127.0.0.1:{server.port}"
        await Mailer(mail_settings(tmp_path, smtp_url=url)).send("a@b.example", "Hi", "text")
        await server.wait_for(1)
        assert server.capture.logins == [("mailer@conduit", "p@ss:word")]


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: only picks a route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address  # noqa: S104


async def test_credentials_are_never_sent_in_clear_to_a_remote_server(tmp_path: Path) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with running_smtp_server(address, with_auth=True) as server:
        url = f"smtp://user:hunter2@{address}:{server.port}"
        with pytest.raises(MailError, match="unencrypted") as caught:
            await Mailer(mail_settings(tmp_path, smtp_url=url)).send("a@b.example", "Hi", "x")
        assert "hunter2" not in str(caught.value)
        assert server.capture.logins == []
        assert server.received == []


async def test_a_refused_recipient_is_a_permanent_failure(tmp_path: Path) -> None:
    with running_smtp_server() as server:
        server.capture.refuse.add("nobody@conduit.example")
        mailer = Mailer(mail_settings(tmp_path, smtp_url=server.url))
        with pytest.raises(MailRejected, match="550"):
            await mailer.send("nobody@conduit.example", "Hi", "text")
        assert server.received == []


async def test_unreachable_server_is_a_temporary_failure(tmp_path: Path) -> None:
    port = free_port()
    mailer = Mailer(mail_settings(tmp_path, smtp_url=f"smtp://127.0.0.1:{port}"), timeout=5)
    with pytest.raises(MailError) as caught:
        await mailer.send("a@b.example", "Hi", "text")
    assert not isinstance(caught.value, MailRejected)


async def test_without_smtp_url_development_writes_a_private_eml_and_logs_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mailer = Mailer(mail_settings(tmp_path, app_env=Environment.DEVELOPMENT))
    assert mailer.configured
    with caplog.at_level(logging.INFO, logger="conduit.mail"):
        await mailer.send("jake@jake.jake", "Reset your password", f"Open {SECRET_LINK}\n")

    folder = tmp_path / "data" / "mail"
    [path] = list(folder.glob("*.eml"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    message = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert message["To"] == "jake@jake.jake"
    assert message["Subject"] == "Reset your password"
    assert SECRET_LINK in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]

    [record] = [r for r in caplog.records if r.name == "conduit.mail"]
    line = record.getMessage()
    assert "jake@jake.jake" in line
    assert "Reset your password" in line
    assert str(path) in line
    assert "s3cr3t-t0ken" not in caplog.text
    assert "Open" not in caplog.text


async def test_each_message_gets_its_own_file(tmp_path: Path) -> None:
    mailer = Mailer(mail_settings(tmp_path))
    for n in range(3):
        await mailer.send("jake@jake.jake", f"Message {n}", "text")
    assert len(list((tmp_path / "data" / "mail").glob("*.eml"))) == 3


async def test_production_without_smtp_url_fails_loudly(tmp_path: Path) -> None:
    settings = mail_settings(
        tmp_path,
        app_env=Environment.PRODUCTION,
        secret_key=STRONG_SECRET,
        database_url="postgresql://db/conduit",
        redis_url="redis://cache:6379/0",
        webhook_secret_keys=generate_key(),
    )
    mailer = Mailer(settings)
    assert not mailer.configured
    with pytest.raises(MailNotConfigured, match="SMTP_URL is not set"):
        await mailer.send("jake@jake.jake", "Hi", "text")
    assert not (tmp_path / "data" / "mail").exists()


def test_smtp_url_parsing() -> None:
    plain = SmtpConfig.parse("smtp://mail.example.com")
    assert (plain.hostname, plain.port, plain.implicit_tls) == ("mail.example.com", 25, False)
    assert (plain.username, plain.password) == (None, None)
    tls = SmtpConfig.parse("smtps://u%2B1:p%2Fw@mail.example.com")
    assert (tls.port, tls.implicit_tls, tls.username, tls.password) == (465, True, "u+1", "p/w")
    assert SmtpConfig.parse("smtp://h:2525").port == 2525
    assert SmtpConfig.parse("smtp://localhost").is_loopback
    assert SmtpConfig.parse("smtp://127.0.0.2").is_loopback
    assert SmtpConfig.parse("smtp://[::1]:25").is_loopback
    assert not SmtpConfig.parse("smtp://mail.example.com").is_loopback
    for bad, reason in [
        ("http://mail.example.com", "smtp:// or smtps://"),
        ("smtp://", "no host"),
        ("smtp://h:notaport", "invalid port"),
    ]:
        with pytest.raises(ValueError, match=reason):
            SmtpConfig.parse(bad)


def test_mail_from_must_hold_an_address(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MAIL_FROM"):
        Mailer(mail_settings(tmp_path, mail_from="Conduit"))


def test_header_injection_is_refused(tmp_path: Path) -> None:
    mailer = Mailer(mail_settings(tmp_path))
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        mailer.build("jake@jake.jake", "Hi\r\nBcc: victim@example.com", "text")
