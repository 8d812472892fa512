"""Running Hypercorn so that SIGTERM drains and a crashed worker is replaced.

Hypercorn's own multi-worker master (`hypercorn --workers N`) does neither (measured, see
docs/operations.md): on SIGTERM it terminates the remaining workers as soon as the first has
exited, resetting their in-flight requests, and when one worker dies it stops the others and
exits. Here:

- each worker process (`run_worker`) handles SIGTERM/SIGINT itself: it starts draining (see
  `lifecycle.DRAIN`), keeps its listener open `delay` seconds, stops accepting, lets the
  requests in flight finish within Hypercorn's `graceful_timeout`, closes its pools and exits 0;
- with `workers` > 0, a supervisor (`supervise`) starts them, forwards SIGTERM/SIGINT, waits
  for them, and replaces one that exits while serving. With a metrics address it also serves
  /metrics there, summed over the workers (`service.infra.metrics`): it gives them an empty
  PROMETHEUS_MULTIPROC_DIR before starting them and drops an exited worker's live gauges.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from multiprocessing import get_context
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from hypercorn.asyncio.run import worker_serve
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.config import Config, Sockets
from hypercorn.events import Event, Updated
from hypercorn.utils import load_application

from service.infra import metrics
from service.infra.lifecycle import DRAIN

logger = logging.getLogger("conduit.serving")

# A worker that keeps dying is not replaced for ever: more exits than this within
# CRASH_WINDOW seconds stop the supervisor (non-zero), and the service manager takes over.
MAX_CRASHES = 5
CRASH_WINDOW = 60.0


def end_connections_when_clients_close() -> None:
    """Let Hypercorn forget a connection as soon as its client has closed it.

    Hypercorn 0.18 keeps a connection's task until its children end, and one of them is the
    keep-alive idle timer (`keep_alive_timeout`, 75 s): a client that closes a kept-alive
    connection, or resets one while its request runs (the answer then restarts the timer),
    leaves the connection, its tasks, parser and buffers in memory for 75 s. Every short-lived
    client does; after a load test, hundreds (docs/performance.md, "Memory (RSS)"). Here the
    timer stops once the read loop has ended (end of stream, reset or read timeout: no request
    can follow), and is not restarted after that. Idempotent; `service.asgi` applies it.
    """
    if getattr(TCPServer._read_data, "_conduit_patched", False):
        return
    read_data = TCPServer._read_data
    protocol_send = TCPServer.protocol_send

    async def _read_data(self: TCPServer) -> None:
        try:
            await read_data(self)
        finally:
            self._conduit_read_done = True  # type: ignore[attr-defined]
            await self.idle_task.stop()

    async def _protocol_send(self: TCPServer, event: Event) -> None:
        if (
            isinstance(event, Updated)
            and event.idle
            and (getattr(self, "_conduit_read_done", False) or self.writer.is_closing())
        ):
            return
        await protocol_send(self, event)

    _read_data._conduit_patched = True  # type: ignore[attr-defined]
    TCPServer._read_data = _read_data  # type: ignore[method-assign]
    TCPServer.protocol_send = _protocol_send  # type: ignore[method-assign]


def run_worker(config: Config, sockets: Sockets | None = None, delay: float = 0.0) -> None:
    """Serve `config.application_path` in this process until SIGTERM/SIGINT, then drain."""
    import uvloop

    # Loading the app configures logging: before it, nothing of ours would be shown.
    app = load_application(config.application_path, config.wsgi_max_body_size)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(app, config, sockets, delay))


async def _serve(app: object, config: Config, sockets: Sockets | None, delay: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    signalled = 0.0

    async def drain() -> None:
        nonlocal signalled
        await stop.wait()
        signalled = time.monotonic()
        DRAIN.begin()
        logger.info(
            "shutting down: readiness fails now, %d requests in flight; "
            "stop accepting in %.1f s, then up to %.1f s for them to finish",
            DRAIN.in_flight,
            delay,
            config.graceful_timeout,
        )
        if delay:
            await asyncio.sleep(delay)
        logger.info("no longer accepting connections, %d requests in flight", DRAIN.in_flight)

    await worker_serve(app, config, sockets=sockets, shutdown_trigger=drain)  # type: ignore[arg-type]
    if DRAIN.in_flight:
        logger.warning(
            "stopped with %d requests unfinished after the grace period", DRAIN.in_flight
        )
    elif DRAIN.draining:
        logger.info(
            "stopped cleanly: every request answered, pools closed, %.1f s after the signal",
            time.monotonic() - signalled,
        )


class _Supervisor:
    def __init__(self, config: Config, workers: int, delay: float, stop_timeout: float) -> None:
        self.config = config
        self.metrics_dir: Path | None = None
        self.workers = workers
        self.delay = delay
        self.stop_timeout = stop_timeout
        self.context = get_context("spawn")
        self.sockets = config.create_sockets()
        self.processes: list[BaseProcess] = []
        self.crashes: deque[float] = deque()
        self.stopping = False

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        # At once, not at the next turn of the loop: readiness must fail without delay.
        self._signal_workers()

    def _signal_workers(self) -> None:
        for process in self.processes:
            if process.exitcode is None and process.pid is not None:
                # A service manager may have signalled the whole group already: harmless.
                os.kill(process.pid, signal.SIGTERM)

    def _start(self) -> None:
        process = self.context.Process(
            target=run_worker,
            kwargs={"config": self.config, "sockets": self.sockets, "delay": self.delay},
            name="conduit-worker",
        )
        process.start()
        self.processes.append(process)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        for _ in range(self.workers):
            self._start()
        logger.info(
            "supervising %d workers: %s",
            self.workers,
            ", ".join(str(p.pid) for p in self.processes),
        )
        while not self.stopping:
            # Short waits: a signal sets `stopping` between two of them.
            wait([p.sentinel for p in self.processes], timeout=0.2)
            for process in [p for p in self.processes if p.exitcode is not None]:
                if self.stopping:
                    break
                self.processes.remove(process)
                process.join()
                self._gone(process)
                if not self._replace(process):
                    self.stopping = True
                    self._close_sockets()
                    self._stop_workers()
                    return 1
        return self._stop_workers()

    def _gone(self, process: BaseProcess) -> None:
        if self.metrics_dir is not None and process.pid is not None:
            metrics.mark_process_dead(process.pid)

    def serve_metrics(self, host: str, port: int) -> None:
        """Serve the workers' summed metrics on `host`:`port` (call before `run`)."""
        self.metrics_dir = metrics.prepare_multiprocess_dir()
        metrics.start_server(host, port)

    def _replace(self, process: BaseProcess) -> bool:
        now = time.monotonic()
        self.crashes.append(now)
        while self.crashes and self.crashes[0] < now - CRASH_WINDOW:
            self.crashes.popleft()
        if len(self.crashes) > MAX_CRASHES:
            logger.error(
                "worker %s exited with code %s; %d exits within %.0f s: giving up",
                process.pid,
                process.exitcode,
                len(self.crashes),
                CRASH_WINDOW,
            )
            return False
        self._start()
        logger.error(
            "worker %s exited with code %s; replaced by worker %s",
            process.pid,
            process.exitcode,
            self.processes[-1].pid,
        )
        return True

    def _close_sockets(self) -> None:
        # The workers hold their own copies: once they close theirs too, the port refuses.
        for sock in [*self.sockets.secure_sockets, *self.sockets.insecure_sockets]:
            sock.close()

    def _stop_workers(self) -> int:
        alive = [p for p in self.processes if p.exitcode is None]
        logger.info("stopping %d workers", len(alive))
        self._signal_workers()
        self._close_sockets()
        deadline = time.monotonic() + self.stop_timeout
        code = 0
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                logger.error("worker %s did not stop in time: killed", process.pid)
                process.kill()
                process.join()
            if process.exitcode != 0:
                code = 1
            self._gone(process)
        logger.info("all workers stopped" if code == 0 else "workers stopped with errors")
        return code


def supervise(
    config: Config,
    *,
    workers: int,
    delay: float,
    stop_timeout: float,
    metrics_address: tuple[str, int] | None = None,
) -> int:
    """Run `workers` worker processes until SIGTERM/SIGINT, replacing any that exits; drain
    them on the signal (each gets `stop_timeout` seconds before SIGKILL). The exit code is 0
    when every worker stopped cleanly. With `metrics_address` (host, port), serve their
    summed metrics there."""
    supervisor = _Supervisor(config, workers, delay, stop_timeout)
    try:
        if metrics_address is not None:
            supervisor.serve_metrics(*metrics_address)
        return supervisor.run()
    finally:
        if supervisor.metrics_dir is not None:
            metrics.remove_multiprocess_dir(supervisor.metrics_dir)
