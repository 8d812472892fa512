"""A tiny TCP proxy for fault tests: put it between the app and a real server, then cut it.

`stop()` closes the listener AND every open connection (both directions), as a crashed or
partitioned server would; `start()` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


class TcpProxy:
    """Forward 127.0.0.1:<port> to a TCP (host, port) or a unix socket path."""

    def __init__(
        self, *, host: str | None = None, port: int | None = None, unix: str | None = None
    ):
        if (unix is None) == (host is None or port is None):
            raise ValueError("give either host and port, or unix")
        self.target_host = host
        self.target_port = port
        self.target_unix = unix
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        """True while the proxy accepts connections."""
        return self._server is not None

    async def start(self) -> None:
        """Listen (on a free port the first time, then on the same port again)."""
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and abort every proxied connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.target_unix is not None:
            return await asyncio.open_unix_connection(self.target_unix)
        assert self.target_host is not None
        return await asyncio.open_connection(self.target_host, self.target_port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await self._open_upstream()
            self._writers.add(upstream_writer)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)  # type: ignore[arg-type]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError):
            writer.transport.abort()


def postgres_socket(socket_dir: str) -> str:
    """The PostgreSQL unix socket file in `socket_dir` (embedded server)."""
    return str(next(Path(socket_dir).glob(".s.PGSQL.*")))


def redis_proxy(url: str, factory: type[TcpProxy] = TcpProxy) -> tuple[TcpProxy, str]:
    """A proxy to the Redis of `url` (TCP or the embedded server's unix socket) and the URL
    that goes through it, with `{port}` to fill in once the proxy has started."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        proxy = factory(unix=parts.path)
        db = parse_qs(parts.query).get("db", ["0"])[0]
    else:
        proxy = factory(host=parts.hostname or "127.0.0.1", port=parts.port or 6379)
        db = parts.path.lstrip("/") or "0"
    return proxy, f"redis://127.0.0.1:{{port}}/{db}"
