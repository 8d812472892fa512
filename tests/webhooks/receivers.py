"""Real HTTP(S) webhook receivers on loopback, each a threaded `http.server` with scripted routes.

Routes (POST; query string ignored unless noted):
- `/ok`: 200 "ok"
- `/status/<code>`: that status; `?retry_after=<value>` adds a Retry-After header
- `/redirect`: 301 to this server's `/ok`
- `/slow`: answers only after `slow_seconds` (or when the server stops)
- `/drip`: 200 with Content-Length 100, then one byte every 0.2 s
- `/huge`: 200 with a 64 MiB Content-Length, streamed until the client hangs up
- `/hangup`: closes the connection without answering
- `/binary`: 200 with NUL and invalid UTF-8 bytes
- `/flaky/<n>`: 500 for the first n requests to that path, then 200
- `/verify`: 204 when the official `standardwebhooks` library verifies the request with any
  of `state.secrets`, 400 otherwise
- `/hold`: answers 200 once `state.release` is set (or the server stops)
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

HUGE_BYTES = 64 * 1024 * 1024


@dataclass
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int
    received_at: float = 0.0  # time.time() when the request had arrived
    verified: bool | None = None  # `/verify` only: whether the signature checked out


@dataclass
class ReceiverState:
    requests: list[Received] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    huge_bytes_sent: int = 0
    slow_seconds: float = 5.0
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    secrets: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    counts: Counter[str] = field(default_factory=Counter)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse can be observed
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        url = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        verified = _verify(state.secrets, body, headers) if url.path == "/verify" else None
        with state.lock:
            state.requests.append(
                Received(
                    method=self.command,
                    path=url.path,
                    headers=headers,
                    body=body,
                    client_port=self.client_address[1],
                    received_at=time.time(),
                    verified=verified,
                )
            )
            state.counts[url.path] += 1
            seen = state.counts[url.path]
        query = parse_qs(url.query)
        if url.path == "/ok":
            self._send(200, b"ok")
        elif url.path.startswith("/status/"):
            extra = {"Retry-After": query["retry_after"][0]} if "retry_after" in query else {}
            self._send(int(url.path.rsplit("/", 1)[1]), b"status body", extra)
        elif url.path == "/redirect":
            host = self.headers["Host"]
            scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
            self._send(301, b"moved", {"Location": f"{scheme}://{host}/ok"})
        elif url.path == "/slow":
            state.stopping.wait(state.slow_seconds)
            self._send(200, b"late")
        elif url.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.flush()
            for _ in range(100):
                if state.stopping.wait(0.2):
                    break
                self.wfile.write(b"x")
                self.wfile.flush()
        elif url.path == "/huge":
            self._send_huge()
        elif url.path == "/hangup":
            self.close_connection = True  # no response at all
        elif url.path == "/binary":
            self._send(200, b"a\x00b\xff\xfec")
        elif url.path.startswith("/flaky/"):
            failures = int(url.path.rsplit("/", 1)[1])
            self._send(500 if seen <= failures else 200, b"flaky")
        elif url.path == "/verify":
            self._send(204 if verified else 400, b"" if verified else b"bad signature")
        elif url.path == "/hold":
            while not (state.release.is_set() or state.stopping.is_set()):
                state.release.wait(0.05)
            self._send(200, b"released")
        else:
            self._send(404, b"no such route")

    def _send_huge(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(HUGE_BYTES))
        self.end_headers()
        chunk = b"y" * 65536
        with suppress(OSError):
            for _ in range(HUGE_BYTES // len(chunk)):
                self.wfile.write(chunk)
                with self.server.state.lock:
                    self.server.state.huge_bytes_sent += len(chunk)
        self.close_connection = True


def _verify(secrets: list[str], body: bytes, headers: dict[str, str]) -> bool:
    for secret in secrets:
        try:
            Webhook(secret).verify(body, headers)
        except WebhookVerificationError:
            continue
        return True
    return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ReceiverState


class _Server6(_Server):
    address_family = socket.AF_INET6


@dataclass
class Receiver:
    """A running receiver: where it listens and what it has seen."""

    host: str
    port: int
    scheme: str
    state: ReceiverState

    def url(self, path: str, *, host: str | None = None) -> str:
        name = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"{self.scheme}://{name}:{self.port}{path}"

    def hits(self, path: str) -> list[Received]:
        with self.state.lock:
            return [r for r in self.state.requests if r.path == path]


@contextmanager
def running_receiver(
    host: str = "127.0.0.1", *, tls: ssl.SSLContext | None = None
) -> Iterator[Receiver]:
    """Serve the scripted routes on `host` (an ephemeral port) until the block exits."""
    server_class = _Server6 if ":" in host else _Server
    server = server_class((host, 0), _Handler)
    server.state = ReceiverState()
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: server.state.sni.append(name)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield Receiver(
            host=host,
            port=server.server_address[1],
            scheme="https" if tls else "http",
            state=server.state,
        )
    finally:
        server.state.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class CertificateFiles:
    """A throw-away CA and a leaf certificate for DNS name `localhost` signed by it."""

    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path) -> CertificateFiles:
    """Create the CA and the `localhost` leaf with the openssl command-line tool."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=webhook test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost")
    (directory / "leaf.ext").write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext")  # fmt: skip
    return CertificateFiles(
        ca=directory / "ca.pem", cert=directory / "leaf.pem", key=directory / "leaf.key"
    )
