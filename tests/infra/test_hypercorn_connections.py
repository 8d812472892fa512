"""Hypercorn forgets a connection once its client has closed it, idle or mid-request
(`service.infra.serving.end_connections_when_clients_close`), instead of keeping it for
`keep_alive_timeout`."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from service.infra.serving import end_connections_when_clients_close
from tests.apps import over_tcp

ANSWER_AFTER = 0.3
REQUEST = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n"


async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await asyncio.sleep(ANSWER_AFTER)
    headers = [(b"content-length", b"4")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"late"})


def connection_tasks() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_coro().__qualname__ == "worker_serve.<locals>._server_callback"  # type: ignore[union-attr]
    ]


async def send_request(writer: asyncio.StreamWriter) -> None:
    writer.write(REQUEST)
    await writer.drain()


async def test_a_connection_closed_mid_request_ends_with_the_request() -> None:
    end_connections_when_clients_close()
    async with over_tcp(slow_app) as port:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        await send_request(writer)
        await asyncio.sleep(ANSWER_AFTER / 3)  # the request is running
        assert len(connection_tasks()) == 1
        # Closed with a reset, as a load generator or a proxy giving up does: Hypercorn's
        # read fails at once (a plain FIN would wait for the answer first).
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(ANSWER_AFTER * 3)  # the app has answered into the closed socket
        lingering = connection_tasks()
        # Hypercorn alone kept it for keep_alive_timeout (75 s), idle timer restarted.
        assert lingering == []


async def test_a_kept_alive_connection_still_serves_its_next_request() -> None:
    end_connections_when_clients_close()
    async with over_tcp(slow_app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for _ in range(2):
            await send_request(writer)
            answers.append(await reader.readuntil(b"late"))
        assert len(connection_tasks()) == 1  # open, idle, waiting for a third request
        writer.close()
        await writer.wait_closed()
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)


async def test_a_kept_alive_connection_the_client_closes_ends_at_once() -> None:
    end_connections_when_clients_close()
    async with over_tcp(slow_app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await send_request(writer)
        await reader.readuntil(b"late")
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(ANSWER_AFTER)
        assert connection_tasks() == []
