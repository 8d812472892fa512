"""Where a worker's memory goes: imports, caches, Python heap, malloc arenas, thread stacks.

Seeds a scratch database like `bench.api_bench` (same helpers, same seed), then:

1. imports the app in a fresh interpreter, dependency by dependency: RSS of the bare
   interpreter, what each import adds, the modules loaded, and those a serving worker never
   needs (tools, the CLI's servers);
2. for each variant (as shipped; `--variant LABEL:NAME=VALUE,...` adds server environment;
   `--against CHECKOUT` serves another checkout), starts one Hypercorn worker serving the API
   through `bench.memory_probe`, and reports from inside the worker: idle just after startup,
   after one login (argon2id), and after wrk on the API's rows (`--rows`, `--duration` s each,
   64 connections, as api_bench): RSS split by kind of mapping (/proc/PID/smaps), glibc's malloc
   totals, pymalloc's arenas, threads, and the caches (SQLAlchemy's compiled cache, the
   prepared statements per connection, the response cache's local copy, the JWT memo);
3. with `--repeat N`, runs the variants N times, alternating their order, and prints per
   variant the median RSS after the run and the median req/s of the signed-in list.

    python -m bench.memory_breakdown
    python -m bench.memory_breakdown --repeat 3 --variant arena2:MALLOC_ARENA_MAX=2
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench import api_bench as ab

PROBE = Path(__file__).with_name("memory_probe.py")
PROBE_MODULE = "conduit_memory_probe"
PROBE_TIMEOUT = 30.0
SIGNED_IN_LIST = "list auth"


@dataclass
class Variant:
    """One way of running the server: a checkout and extra environment."""

    label: str
    tree: ab.Tree = ab.THIS_TREE
    env: dict[str, str] = field(default_factory=dict)
    rss_after: list[float] = field(default_factory=list)
    rss_idle: list[float] = field(default_factory=list)
    rss_settled: list[float] = field(default_factory=list)
    list_rps: list[float] = field(default_factory=list)


def mib(kib: float) -> str:
    """KiB as MiB, one decimal."""
    return f"{kib / 1024:7.1f}"


def worker_pid(server: ab.Server) -> int:
    """The Hypercorn worker process of the server (the one multiprocessing spawned)."""
    for pid in ab.group_pids(server.proc.pid):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise ab.BenchError("no worker process found (is --workers 1 in effect?)")


def wait_idle(pid: int, timeout: float = 15.0) -> None:
    """Until the worker's CPU time stops growing: requests still queued when wrk stopped
    (an overloaded worker has one per connection) are answered before it is probed."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        if ticks == last:
            return
        last = ticks
        time.sleep(0.3)


def probe(pid: int, out: Path, sig: signal.Signals = signal.SIGUSR2) -> dict[str, Any]:
    """Ask the worker for its report (SIGUSR2; SIGUSR1 also empties its caches) and read it."""
    out.unlink(missing_ok=True)
    os.kill(pid, sig)
    deadline = time.monotonic() + PROBE_TIMEOUT
    while not out.exists():
        if time.monotonic() > deadline:
            raise ab.BenchError(f"worker {pid} wrote no memory report in {PROBE_TIMEOUT:.0f} s")
        time.sleep(0.1)
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def import_breakdown(env: dict[str, str], tree: ab.Tree, workdir: Path) -> dict[str, Any]:
    """The probe's --imports report, run by `tree`'s Python."""
    done = subprocess.run(
        [tree.python, str(workdir / f"{PROBE_MODULE}.py"), "--imports"],
        cwd=tree.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise ab.BenchError(f"import breakdown failed:\n{(done.stdout + done.stderr)[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def print_imports(result: dict[str, Any]) -> None:
    """The import breakdown."""
    print(
        f"\nimports: bare interpreter {mib(result['bare_kib']).strip()} MiB RSS, with the app "
        f"imported and built {mib(result['rss_kib']).strip()} MiB, {result['modules']} modules; "
        "RSS added by each import in turn:"
    )
    for name, kib, modules in result["steps"]:
        print(f"    {name:<46} {mib(kib)} MiB {modules:>5} modules")
    counts = ", ".join(f"{name} {n}" for name, n in result["modules_by_package"][:14])
    print(f"  modules by package: {counts}")
    print(f"  imported but never needed to serve: {', '.join(result['not_serving']) or 'none'}")


STAGES = ("idle", "after login", "after run")


def print_stages(label: str, reports: dict[str, dict[str, Any]]) -> None:
    """One variant's reports side by side."""

    def line(name: str, values: Sequence[Any]) -> None:
        print(f"  {name:<36}" + "".join(f"{v:>13}" for v in values))

    stages = [s for s in (*STAGES, "settled") if s in reports]
    got = [reports[s] for s in stages]
    print(f"\n[{label}] worker memory (MiB)          " + "".join(f"{s:>13}" for s in stages))
    line("VmRSS", [mib(r["status"]["VmRSS"]).strip() for r in got])
    line("  anonymous (RssAnon)", [mib(r["status"]["RssAnon"]).strip() for r in got])
    line("  file-backed (RssFile: code, data)", [mib(r["status"]["RssFile"]).strip() for r in got])
    kinds: dict[str, int] = {}
    for r in got:
        for kind, kib in r["mappings"].items():
            kinds[kind] = max(kinds.get(kind, 0), kib)
    for kind in sorted(kinds, key=lambda k: -kinds[k])[:14]:
        line(f"  {kind[:34]}", [mib(r["mappings"].get(kind, 0)).strip() for r in got])
    for part, keys in (
        ("mallinfo", ("arenas_kib", "mmapped_kib", "in_use_kib", "free_kib")),
        ("pymalloc", ("total_kib", "allocated_kib", "free_in_pools_kib")),
    ):
        for key in keys:
            name = f"{part.replace('info', '')} {key.removesuffix('_kib')}"
            line(name, [mib(r[part].get(key, 0)).strip() for r in got])
    line("threads", [r["status"]["Threads"] for r in got])
    line("modules", [r["modules"] for r in got])
    caches = got[-1]["caches"]
    for name in caches:
        if name != "largest types":
            line(name[:36], [r["caches"].get(name, 0) for r in got])
    print(f"  threads after the run: {', '.join(got[-1]['threads'])}")
    print(f"  not needed to serve, yet loaded: {', '.join(got[-1]['not_serving']) or 'none'}")
    most = ", ".join(f"{name.rsplit('.', 1)[-1]} {n}" for name, n in caches["largest types"])
    print(f"  most numerous objects after the run: {most}")
    alive = ", ".join(f"{name} {n}" for name, n in got[-1]["coroutines"])
    print(f"  coroutines alive after the run: {alive or 'none'}")
    freed = got[-1]["released_kib"]
    if freed:
        held = ", ".join(f"{name} {kib / 1024:.1f}" for name, kib in freed.items())
        print(f"  held after the run, measured by emptying each (MiB, Python + malloc): {held}")


def probe_env(db_url: str, workdir: Path, tree: ab.Tree, redis_url: str) -> dict[str, str]:
    """api_bench's server environment (cache on, rate limits raised), the probe importable."""
    options = SimpleNamespace(redis_url=redis_url, no_rate_limit=False, server_env=[])
    env = ab.server_env(options, db_url, workdir, "on", tree=tree, redis_url=redis_url)  # type: ignore[arg-type]
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), env["PYTHONPATH"]])
    return env


def run_variant(
    args: argparse.Namespace, variant: Variant, db_url: str, workdir: Path, quiet: bool
) -> None:
    """Serve the variant, probe it idle, after a login and after the wrk rows."""
    redis_url = ab.tree_redis_url(args.redis_url, variant.tree)
    ab.flush_redis(redis_url)
    env = probe_env(db_url, workdir, variant.tree, redis_url)
    out = workdir / f"report-{secrets.token_hex(4)}.json"
    env |= variant.env | {"MEMORY_PROBE_OUT": str(out)}
    label = f"memory-{variant.label}"
    app = f"{PROBE_MODULE}:app"
    reports: dict[str, dict[str, Any]] = {}
    with ab.hypercorn_server(env, 1, workdir, label, app=app, tree=variant.tree) as server:
        pid = worker_pid(server)
        time.sleep(1)
        reports["idle"] = probe(pid, out)
        token = ab.login_token(server.port, "user1@example.com")
        reports["after login"] = probe(pid, out)
        slug, author = ab.someone_elses_article(server.port, token)
        rates = []
        for target in ab.endpoints(slug, author):
            if target.name not in args.rows:
                continue
            ab.warm_up(server, target, token)
            lua = ab.write_lua(workdir, target, token, f"-{variant.label}")
            result = ab.run_wrk(args, server, target.path, lua)
            rates.append(f"{target.name} {result.rps:.0f}")
            if target.name == SIGNED_IN_LIST:
                variant.list_rps.append(result.rps)
            time.sleep(1)
        wait_idle(pid)
        if args.settle:
            reports["after run"] = probe(pid, out)
            # Connections whose client left mid-request linger in Hypercorn until its
            # keep_alive_timeout (see docs/performance.md "Memory (RSS)").
            time.sleep(args.settle)
            reports["settled"] = probe(pid, out, signal.SIGUSR1)
        else:
            reports["after run"] = probe(pid, out, signal.SIGUSR1)
    variant.rss_idle.append(reports["idle"]["status"]["VmRSS"] / 1024)
    variant.rss_after.append(reports["after run"]["status"]["VmRSS"] / 1024)
    if "settled" in reports:
        variant.rss_settled.append(reports["settled"]["status"]["VmRSS"] / 1024)
    print(
        f"[{variant.label}] RSS idle {variant.rss_idle[-1]:.1f} MiB, after the run "
        f"{variant.rss_after[-1]:.1f} MiB; req/s: {', '.join(rates)}",
        flush=True,
    )
    if not quiet:
        print_stages(variant.label, reports)


def parse_variants(args: argparse.Namespace) -> list[Variant]:
    """As shipped, then the --variant and --against ones."""
    variants = [Variant("shipped")]
    for spec in args.variant:
        label, _, assignments = spec.partition(":")
        env = dict(item.split("=", 1) for item in assignments.split(",") if item)
        variants.append(Variant(label, env=env))
    for number, root in enumerate(args.against, start=1):
        path = Path(root).resolve()
        tree = ab.Tree(
            root=path, python=str(path / ".venv" / "bin" / "python"), suffix=f"/{number}"
        )
        variants.append(Variant(f"checkout {path.name}", tree=tree))
    return variants


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"),
        help="a PostgreSQL server where a scratch database may be created and dropped",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
        help="a Redis database the benchmark may FLUSH (default redis://127.0.0.1:6379/13)",
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per row (5)")
    parser.add_argument(
        "--rows",
        default=",".join(ab.ROW_NAMES),
        help=f"api_bench rows to run (default all: {', '.join(ab.ROW_NAMES)})",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:NAME=VALUE,...",
        help="also run the server with this environment (repeatable)",
    )
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="CHECKOUT",
        help="also serve this other checkout (its own .venv), e.g. the commit before a change",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="probe once more this long after the run (0: not)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per variant, order alternating (1)"
    )
    args = parser.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if not args.rows or any(r not in ab.ROW_NAMES for r in args.rows):
        parser.error(f"--rows takes names from: {', '.join(ab.ROW_NAMES)}")
    if any(":" not in spec for spec in args.variant):
        parser.error("--variant takes LABEL:NAME=VALUE,...")
    if args.repeat < 1 or args.duration < 1:
        parser.error("--repeat and --duration must be >= 1")
    # What api_bench's helpers read.
    args.connections, args.wrk_timeout, args.big, args.seed_args = 64, 10.0, False, None
    return args


def print_summary(variants: Sequence[Variant]) -> None:
    """Medians per variant, and each against the first."""
    print("\nvariant                     runs  RSS idle  RSS after run  list auth req/s   vs first")
    first = variants[0]
    for variant in variants:
        after = statistics.median(variant.rss_after)
        rps = statistics.median(variant.list_rps) if variant.list_rps else float("nan")
        ratio = ""
        if variant is not first and first.list_rps and variant.list_rps:
            base_after = statistics.median(first.rss_after)
            ratio = (
                f"RSS {after - base_after:+.1f} MiB, req/s "
                f"{rps / statistics.median(first.list_rps):.2f}x"
            )
        print(
            f"{variant.label[:26]:<26} {len(variant.rss_after):>5} "
            f"{statistics.median(variant.rss_idle):>9.1f} {after:>14.1f} {rps:>16.0f}   {ratio}"
        )
    print(
        "(MiB, medians; RSS of the one worker process; req/s: wrk -t2 -c64 on the signed-in list)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the breakdown."""
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found on PATH (apt-get install wrk)", file=sys.stderr)
        return 2
    variants = parse_variants(args)
    name = f"perf_bench_{secrets.token_hex(5)}"
    admin_url, db_url = ab.admin_and_scratch_urls(args.database_url, name)
    print(f"scratch database {name}; Redis {args.redis_url} (flushed); {ab.load_average()}")
    signal.signal(signal.SIGTERM, ab._interrupt)
    with tempfile.TemporaryDirectory(prefix="memory_breakdown_") as tmp:
        workdir = Path(tmp)
        shutil.copy(PROBE, workdir / f"{PROBE_MODULE}.py")
        ab.create_database(admin_url, name)
        try:
            ab.prepare_database(args, db_url)
            env = probe_env(db_url, workdir, ab.THIS_TREE, args.redis_url)
            print_imports(import_breakdown(env, ab.THIS_TREE, workdir))
            for run in range(args.repeat):
                order = variants if run % 2 == 0 else list(reversed(variants))
                for variant in order:
                    run_variant(args, variant, db_url, workdir, quiet=run > 0)
            print_summary(variants)
            return 0
        except ab.BenchError as exc:
            print(f"memory_breakdown: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("memory_breakdown: interrupted", file=sys.stderr)
            return 1
        finally:
            ab.drop_database(admin_url, name)


if __name__ == "__main__":
    sys.exit(main())
