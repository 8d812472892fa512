"""What tracing costs per request: `bench.hit_path_bench` (the served ASGI app called directly)
run with tracing off, on, and on but sampling nothing, each in a process of its own (a provider is
per process), the spans exported over OTLP/HTTP to a local sink that accepts and drops them.

    python -m bench.tracing_bench --database-url postgresql://... [--redis-url redis://...]
        [--baseline DIR]   # also the checkout in DIR (e.g. before tracing), base of the ratios

Two requests: the cached anonymous `GET /api/v1/tags` (answered by the response cache, before
Flask: the server span and the cache's Redis span) and `GET /api/v1/articles?limit=20` with
the response cache off (Flask, SQL statements, Redis reads). Each mode runs `--rounds` times,
interleaved with the others; it prints the median over the rounds of each run's median CPU
time per request, and the ratio to the first mode measured in the same invocation (and the
best round's, less disturbed by other load on the machine). The sink
runs in a process of its own, so its CPU is not counted; the exporter's protobuf encoding and
HTTP calls (the batch processor's thread) are. The database should be migrated and seeded
(`conduit migrate`, `conduit seed`).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.hit_path_bench import add_server_arguments

MODES = {
    "off": {},
    "on": {"OTEL_TRACES_SAMPLER": "always_on"},
    "unsampled": {"OTEL_TRACES_SAMPLER": "always_off"},
}
PATHS = {
    "/api/v1/tags": {},
    "/api/v1/articles?limit=20": {"RESPONSE_CACHE_ENABLED": "false"},
}
_CPU = re.compile(r"([0-9.]+) us CPU")


class _Sink(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and drops them; counts them."""

    exports = 0
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with _Sink.lock:
            _Sink.exports += 1
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        body = str(_Sink.exports).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve_sink() -> None:
    """Run the sink on a free port of 127.0.0.1; print the port, serve until killed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def exports(port: int) -> int:
    """How many exports the sink has received."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as answer:
        return int(answer.read())


def run_one(args: argparse.Namespace, path: str, mode: str, port: int) -> float:
    """One hit_path_bench run in a child process; its median CPU us per request."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(PATHS[path])
    python, cwd = sys.executable, None
    if mode == "baseline":
        # Another checkout (say, before tracing existed) with its own virtualenv in `.venv`.
        python, cwd = os.path.join(args.baseline, ".venv", "bin", "python"), args.baseline
    elif mode != "off":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
        env.update(MODES[mode])
    requests = args.requests if path == "/api/v1/tags" else args.requests // 10
    command = [
        python,
        "-m",
        "bench.hit_path_bench",
        "--database-url",
        args.database_url,
        "--redis-url",
        args.redis_url,
        "--path",
        path,
        "--requests",
        str(requests),
        "--repeats",
        str(args.repeats),
        "--concurrency",
        str(args.concurrency),
        "--no-rate-limit",
    ]
    output = subprocess.run(
        command, env=env, cwd=cwd, check=True, capture_output=True, text=True
    ).stdout
    found = _CPU.search(output)
    if found is None:
        raise SystemExit(f"unexpected output: {output}")
    return float(found.group(1))


def span_cost(spans: int = 20_000) -> float:
    """CPU us of one span in the SDK alone (four attributes, batch processor, an exporter that
    drops): the floor of what each traced request, statement or command adds."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Dropping(SpanExporter):
        def export(self, batch: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    tracer = provider.get_tracer("bench")
    attributes = {"db.system.name": "postgresql", "db.operation.name": "SELECT", "a": 1, "b": "x"}
    rounds = []
    for _ in range(3):
        started = time.process_time()
        for _ in range(spans):
            tracer.start_span("SELECT", attributes=attributes).end()
        rounds.append((time.process_time() - started) / spans * 1e6)
    provider.shutdown()
    return min(rounds)


def main() -> None:
    """Run every path in every mode; print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of each mode")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="comma-separated, of: off, on, unsampled (the first is the base of the ratios)",
    )
    parser.add_argument(
        "--baseline",
        help="also run (first, as the base of the ratios) the checkout in this directory, "
        "with its .venv: e.g. the commit before tracing, to show that off costs nothing",
    )
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        serve_sink()
        return
    modes = args.modes.split(",")
    if not set(modes) <= MODES.keys():
        raise SystemExit(f"--modes: choose among {', '.join(MODES)}")
    if args.baseline:
        modes.insert(0, "baseline")
    sink = subprocess.Popen(
        [sys.executable, "-m", "bench.tracing_bench", "--sink"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        for path in PATHS:
            # Interleaved rounds: a machine whose load drifts skews every mode alike.
            runs: dict[str, list[float]] = {mode: [] for mode in modes}
            for _ in range(args.rounds):
                for mode in modes:
                    runs[mode].append(run_one(args, path, mode, port))
            figures = {mode: statistics.median(values) for mode, values in runs.items()}
            base = figures[modes[0]]
            print(f"GET {path}:")
            for mode, cpu in figures.items():
                low = min(runs[mode])
                print(
                    f"  tracing {mode:<10} {cpu:7.1f} us CPU per request  x{cpu / base:.2f}"
                    f"  (best round {low:.1f} us, x{low / min(runs[modes[0]]):.2f})"
                )
        print(f"OTLP exports received by the sink: {exports(port)}")
        print(f"one span in the SDK alone: {span_cost():.1f} us CPU")
    finally:
        sink.kill()
        sink.wait()


if __name__ == "__main__":
    main()
