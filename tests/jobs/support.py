"""Test helpers for jobs and mail: a real SMTP server (aiosmtpd) capturing what it receives."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, TypeVar

from aiosmtpd import smtp as aiosmtpd_smtp
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, Session

from tests.net import free_port

T = TypeVar("T")

TOKEN_IN_LINK = re.compile(r"token=([A-Za-z0-9_-]+)")


@dataclass
class ReceivedMail:
    """One message as the SMTP server received it."""

    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        """The plain-text body (with the wire's CRLF line ends as `\\n`)."""
        body = self.message.get_body(("plain",))
        assert body is not None
        content: str = body.get_content()
        return content.replace("\r\n", "\n")

    @property
    def reset_token(self) -> str:
        """The token of the reset link in the body."""
        found = TOKEN_IN_LINK.search(self.text)
        assert found is not None, self.text
        return found.group(1)


@dataclass
class SmtpCapture:
    """aiosmtpd handler keeping every message; refuses recipients listed in `refuse`."""

    received: list[ReceivedMail] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: aiosmtpd_smtp.SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: aiosmtpd_smtp.SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or envelope.content
        assert isinstance(content, bytes)
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self._arrived:
            self.received.append(
                ReceivedMail(
                    sender=str(envelope.mail_from),
                    recipients=list(envelope.rcpt_tos),
                    message=message,
                )
            )
            self._arrived.notify_all()
        return "250 Message accepted"

    def wait_for(self, count: int, within: float) -> bool:
        """Block until `count` messages arrived; False after `within` seconds."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.received) >= count, within)

    def authenticate(
        self,
        server: aiosmtpd_smtp.SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        data: Any,
    ) -> AuthResult:
        login = data.login.decode() if isinstance(data.login, bytes) else str(data.login)
        password = data.password.decode() if isinstance(data.password, bytes) else data.password
        with self._arrived:
            self.logins.append((login, str(password)))
        return AuthResult(success=True)


@dataclass
class SmtpServer:
    """A running aiosmtpd server and what it captured."""

    host: str
    port: int
    capture: SmtpCapture

    @property
    def url(self) -> str:
        """`SMTP_URL` for this server."""
        return f"smtp://{self.host}:{self.port}"

    @property
    def received(self) -> list[ReceivedMail]:
        """Messages received so far."""
        return list(self.capture.received)

    async def wait_for(self, count: int, within: float = 10.0) -> list[ReceivedMail]:
        """Wait until at least `count` messages arrived (AssertionError after `within` s)."""
        arrived = await asyncio.to_thread(self.capture.wait_for, count, within)
        assert arrived, f"{count} message(s) expected, {len(self.capture.received)} arrived"
        return self.received


@contextmanager
def running_smtp_server(
    host: str = "127.0.0.1", *, bind: str | None = None, with_auth: bool = False
) -> Iterator[SmtpServer]:
    """An aiosmtpd server on a free port (in its own thread), stopped on exit."""
    capture = SmtpCapture()
    port = free_port()
    options: dict[str, Any] = {}
    if with_auth:
        options = {"authenticator": capture.authenticate, "auth_require_tls": False}
    controller = Controller(capture, hostname=bind or host, port=port, **options)
    controller.start()
    try:
        yield SmtpServer(host=host, port=port, capture=capture)
    finally:
        controller.stop()


async def eventually(check: Callable[[], T], within: float = 10.0, interval: float = 0.05) -> T:
    """Poll `check()` until it returns something true, and return that (bounded by `within`)."""
    async with asyncio.timeout(within):
        while True:
            result = check()
            if result:
                return result
            await asyncio.sleep(interval)
