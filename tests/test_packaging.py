"""`uv run` installs exactly the hashed lock's versions; no registry host in the repo."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_uv_constraints_pin_exactly_the_lock() -> None:
    """pyproject's generated constraint block names every locked package at its locked version."""
    result = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "lock.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    constraints = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"][
        "constraint-dependencies"
    ]
    lock = (ROOT / "requirements.lock").read_text()
    assert len(constraints) == lock.count("==") > 100
    assert all("==" in pin for pin in constraints)


def test_no_registry_host_in_the_lock_files() -> None:
    """The tracked lock and its pins carry names, versions and hashes only."""
    for name in ("requirements.lock", "pyproject.toml"):
        text = (ROOT / name).read_text()
        assert "://" not in text, name
