"""Running the `conduit` command in tests: a clean environment and a thread of its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import cli
from service.settings import Settings

ENV_VARIABLES = ("APP_ENV", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DATA_DIR", "LOG_LEVEL")


def cli_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Settings
) -> Iterator[None]:
    """The test database as DATABASE_URL, nothing else; the CLI's logging setup undone after."""
    for name in ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    assert settings.database_url is not None
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    loggers = [logging.getLogger(name) for name in ("", "conduit.cli")]
    saved = [(lg, lg.handlers[:], lg.level) for lg in loggers]
    yield
    for lg, handlers, level in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)


async def run(*argv: str) -> int:
    """`conduit *argv`; main() runs its own event loop (asyncio.run), so in a thread."""
    return await asyncio.to_thread(cli.main, list(argv))
