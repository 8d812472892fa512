"""The shipped Locust scenarios run clean against a real server on a freshly seeded database.

Locust runs in a subprocess: importing it here would monkey-patch this process with gevent.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.infra.settings import Settings
from service.seed import SeedOptions, seed
from tests.net import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
SEEDED = SeedOptions(users=40, articles=150, comments_per_article=1, tags=20)
SECRET = "locust-smoke-secret-" + "q" * 32
# Far above what 20 simulated users can send: any 429 would be a bug, not the limit.
RAISED_LIMITS = {
    "RATE_LIMIT_ANONYMOUS_PER_MINUTE": "1000000",
    "RATE_LIMIT_AUTHENTICATED_PER_MINUTE": "1000000",
    "RATE_LIMIT_AUTH_PER_MINUTE": "1000000",
}
# Routes each visitor kind is sure to hit within the run.
EXPECTED_ROUTES = {
    ("POST", "/api/v1/users/login"),
    ("GET", "/api/v1/articles"),
    ("GET", "/api/v1/articles/[slug]"),
    ("GET", "/api/v1/articles/feed"),
    ("POST", "/api/v1/articles"),
}
INTEGRATION_ROUTES = {("POST", "/api/v1/clients"), ("POST", "/api/v1/oauth/token")}


def child_env(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LOAD_", "RATE_LIMIT_", "DATABASE_", "REDIS_", "APP_ENV"))
    }
    return env | {"PYTHONUNBUFFERED": "1"} | extra


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """`conduit serve` on a free port, against the test database, rate limits raised."""
    assert settings.database_url is not None
    assert settings.redis_url is not None
    port = free_port()
    log = tmp_path / "serve.log"
    env = child_env(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        SECRET_KEY=SECRET,
        DATA_DIR=str(tmp_path / "data"),
        ACCESS_LOG="false",
        LOG_LEVEL="WARNING",
        **RAISED_LIMITS,
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/readyz", 30, proc=proc, log=log)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()


def visitor_kinds(base: str) -> str:
    """Every kind, but integrations only once the server has the OAuth endpoints."""
    paths = httpx.get(f"{base}/api/v1/openapi.json", timeout=10).json()["paths"]
    kinds = ["reader", "member", "author"]
    if "/api/v1/oauth/token" in paths and "/api/v1/clients" in paths:
        kinds.append("integration")
    return ",".join(kinds)


async def test_locust_mix_runs_without_failures(
    database_url: str, server: str, tmp_path: Path
) -> None:
    assert importlib.util.find_spec("locust") is not None, (
        "locust is a dev dependency: install the dev group (uv pip sync requirements.lock)"
    )
    await seed(database_url=database_url, options=SEEDED)
    prefix = tmp_path / "locust"
    command = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless", "-u", "20", "-r", "20", "-t", "10s",
        "--host", server,
        "--only-summary",
        "--csv", str(prefix),
    ]  # fmt: skip
    kinds = visitor_kinds(server)
    env = child_env(
        LOAD_USERS=str(SEEDED.users),
        LOAD_CLASSES=kinds,
        # Members and authors are rarer than readers: give them room among 20 users.
        LOAD_READER_WEIGHT="2",
        LOAD_MEMBER_WEIGHT="1",
        LOAD_AUTHOR_WEIGHT="1",
        LOAD_INTEGRATION_WEIGHT="1",
        LOAD_THINK_SCALE="0.05",
    )
    done = subprocess.run(  # noqa: ASYNC221 (the test has nothing else to do meanwhile)
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    with (tmp_path / "locust_stats.csv").open() as file:
        rows = list(csv.DictReader(file))
    [total] = [row for row in rows if row["Name"] == "Aggregated"]
    routes = {(row["Type"], row["Name"]) for row in rows if row["Name"] != "Aggregated"}
    assert int(total["Failure Count"]) == 0, (tmp_path / "locust_failures.csv").read_text()
    assert int(total["Request Count"]) > 100, output
    expected = EXPECTED_ROUTES | (INTEGRATION_ROUTES if "integration" in kinds else set())
    assert routes >= expected, routes
    assert done.returncode == 0, output
