"""SIGTERM under load: what happens to the requests in flight.

Starts a serving command, keeps CONNECTIONS clients sending requests over kept-alive
connections, sends SIGTERM to the command after --after seconds, and sorts every request:

- ok: answered (any status; a 503 while draining counts here, it was answered);
- refused: a new connection refused (the listener had closed: expected after SIGTERM);
- dropped-reused: sent on a connection that had already served a request, and the connection
  closed without an answer (the server closed a kept-alive connection under the request);
- dropped-new: sent on a fresh connection that was closed without an answer (accepted by the
  kernel into the listen backlog just as the listener closed).

Only the dropped ones are lost requests. It also prints how long the command took to exit
and its exit code. Run it against a migrated database (APP_ENV, DATABASE_URL, REDIS_URL,
SECRET_KEY... in the environment), e.g.

    python bench/shutdown_bench.py -- conduit serve --workers 2 --bind 127.0.0.1:18080
    python bench/shutdown_bench.py -- hypercorn --config hypercorn.toml \
        --bind 127.0.0.1:18080 service.asgi:app
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import time

REQUEST = b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n"


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server closes the connection after it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection") == "close"


async def _client(
    host: str, port: int, path: bytes, stop_at: float, counts: collections.Counter[str]
) -> None:
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            counts["refused"] += 1
            await asyncio.sleep(0.05)
            continue
        served = 0
        try:
            while time.monotonic() < stop_at:
                writer.write(REQUEST % path)
                try:
                    status, close = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError):
                    counts["dropped-reused" if served else "dropped-new"] += 1
                    break
                served += 1
                counts["ok"] += 1
                counts[f"status {status}"] += 1
                if close:
                    break
        finally:
            writer.close()


async def _load(args: argparse.Namespace, proc: subprocess.Popen[bytes]) -> None:
    host, _, port = args.bind.rpartition(":")
    stop_at = time.monotonic() + args.after + args.then
    counts: collections.Counter[str] = collections.Counter()
    clients = [
        asyncio.create_task(_client(host, int(port), args.path.encode(), stop_at, counts))
        for _ in range(args.connections)
    ]
    await asyncio.sleep(args.after)
    before = counts["ok"]
    signalled = time.monotonic()
    proc.terminate()
    code = await asyncio.to_thread(proc.wait, 120)
    exited = time.monotonic() - signalled
    await asyncio.gather(*clients)
    print(f"answered before SIGTERM: {before}, after: {counts['ok'] - before}")
    print(f"exit code {code} after {exited:.2f} s")
    for name in sorted(counts):
        print(f"  {name}: {counts[name]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1:18080", help="where the command listens")
    parser.add_argument("--path", default="/api/v1/articles?limit=20")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--after", type=float, default=3.0, help="SIGTERM after (s)")
    parser.add_argument("--then", type=float, default=5.0, help="keep sending for (s)")
    parser.add_argument("--log", help="write the command's output to this file")
    parser.add_argument("command", nargs="+", help="the serving command (after --)")
    args = parser.parse_args()
    log = open(args.log, "wb") if args.log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(args.command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                subprocess.run(
                    ["curl", "-sf", "-o", "/dev/null", f"http://{args.bind}/readyz"], check=True
                )
                break
            except subprocess.CalledProcessError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit("the command did not start")
                time.sleep(0.2)
        time.sleep(2)  # every worker up
        asyncio.run(_load(args, proc))
    finally:
        if proc.poll() is None:
            proc.kill()


if __name__ == "__main__":
    main()
