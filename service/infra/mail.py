"""Outgoing mail: SMTP (aiosmtplib), or `.eml` files in `data_dir/mail` during development.

`SMTP_URL` is `smtp://user:pass@host:port` (STARTTLS whenever the server offers it; port 25
by default) or `smtps://user:pass@host:port` (TLS from the start; port 465 by default). User
and password are percent-decoded. Credentials are never sent over an unencrypted connection,
except to a loopback address (a local relay or test server).

Without `SMTP_URL`, development and test write each message to `data_dir/mail/*.eml` (private
files: they hold reset links) and log one line naming recipient and subject, never the body.
Production refuses to pretend: every send raises `MailNotConfigured`, so the job that wanted
to send it fails loudly in the worker log and is retried once SMTP is configured.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiosmtplib

from service.infra.settings import Settings

logger = logging.getLogger("conduit.mail")

DEFAULT_TIMEOUT = 30.0
_DEFAULT_PORTS = {"smtp": 25, "smtps": 465}


class MailError(Exception):
    """A message could not be sent."""


class MailNotConfigured(MailError):
    """No `SMTP_URL` in production: mail cannot be delivered."""


class MailRejected(MailError):
    """The SMTP server refused the message for good (a 5xx answer); retrying cannot help."""


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to deliver, parsed from `SMTP_URL`."""

    hostname: str
    port: int
    username: str | None
    password: str | None = None
    implicit_tls: bool = False

    @classmethod
    def parse(cls, url: str) -> SmtpConfig:
        """Read `smtp://user:pass@host:port` or `smtps://...`; `ValueError` names the problem."""
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS:
            raise ValueError("SMTP_URL must start with smtp:// or smtps://")
        if not parts.hostname:
            raise ValueError("SMTP_URL has no host")
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise ValueError("SMTP_URL has an invalid port") from None
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(
            hostname=parts.hostname,
            port=port,
            username=username,
            password=password,
            implicit_tls=parts.scheme == "smtps",
        )

    @property
    def is_loopback(self) -> bool:
        """True when the server is on this machine."""
        if self.hostname == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.hostname).is_loopback
        except ValueError:
            return False


class Mailer:
    """Sends plain-text mail as configured by `settings` (see the module docstring)."""

    def __init__(self, settings: Settings, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.sender = settings.mail_from
        self.timeout = timeout
        self.smtp = SmtpConfig.parse(settings.smtp_url) if settings.smtp_url else None
        self.folder: Path | None = None
        if self.smtp is None and not settings.is_production:
            self.folder = settings.data_dir / "mail"
        _, address = parseaddr(self.sender)
        if "@" not in address:
            raise ValueError("MAIL_FROM must contain an email address")
        self._domain = address.rsplit("@", 1)[1]

    @property
    def configured(self) -> bool:
        """False when mail cannot go anywhere (production without `SMTP_URL`)."""
        return self.smtp is not None or self.folder is not None

    def build(self, to: str, subject: str, text: str) -> EmailMessage:
        """The message `send` delivers (header values with line breaks raise ValueError)."""
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = format_datetime(datetime.now(UTC))
        # An explicit domain: without one, make_msgid resolves this host's name (slow DNS).
        message["Message-ID"] = make_msgid(domain=self._domain)
        message.set_content(text)
        return message

    async def send(self, to: str, subject: str, text: str) -> None:
        """Deliver one message, or raise `MailError` (`MailRejected` when retrying is useless)."""
        message = self.build(to, subject, text)
        if self.smtp is not None:
            await self._send_smtp(self.smtp, message)
            logger.info("mail sent: %s", subject, extra={"message_id": message["Message-ID"]})
        elif self.folder is not None:
            path = await asyncio.to_thread(_write_private, self.folder, message.as_bytes())
            # Recipient and subject only: the body holds the secret (a reset link).
            logger.info("mail to %s: %s (saved to %s)", to, subject, path)
        else:
            raise MailNotConfigured("SMTP_URL is not set: mail cannot be sent in production")

    async def _send_smtp(self, config: SmtpConfig, message: EmailMessage) -> None:
        client = aiosmtplib.SMTP(
            hostname=config.hostname,
            port=config.port,
            use_tls=config.implicit_tls,
            # None: upgrade with STARTTLS when the server offers it.
            start_tls=False if config.implicit_tls else None,
            timeout=self.timeout,
        )
        try:
            async with client:
                if config.username is not None:
                    encrypted = client.get_transport_info("sslcontext") is not None
                    if not encrypted and not config.is_loopback:
                        raise MailError(
                            "refusing to send SMTP credentials over an unencrypted connection "
                            f"to {config.hostname} (the server offered no STARTTLS; use smtps://)"
                        )
                    await client.login(config.username, config.password or "")
                await client.send_message(message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = sorted({error.code for error in exc.recipients})
            if all(code >= 500 for code in codes):
                raise MailRejected(f"recipient refused by the server ({codes})") from exc
            raise MailError(f"recipient temporarily refused ({codes})") from exc
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 500:
                raise MailRejected(f"SMTP server answered {exc.code}: {exc.message}") from exc
            raise MailError(f"SMTP server answered {exc.code}: {exc.message}") from exc
        except aiosmtplib.SMTPException as exc:
            raise MailError(f"SMTP delivery failed: {exc}") from exc


def _write_private(folder: Path, data: bytes) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"{stamp}-{secrets.token_hex(4)}.eml"
    # Created 0600 from the start: the message carries a secret link.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    return path
