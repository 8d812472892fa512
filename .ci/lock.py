"""Keep the pinned views of the dependencies in step.

Two hashed locks, with no registry addresses:
- `requirements.lock`, the development lock: the runtime dependencies and the `dev` group (tests,
  linters, load testers, the embedded servers). CI and developers install it.
- `deploy/requirements-runtime.lock`, the runtime lock: `[project] dependencies` only, at the very
  versions and hashes of the development lock (compiled with its pins as constraints). The image
  installs it.
`uv run` resolves the project itself into an untracked `uv.lock` (which records registry
addresses, so it stays out of git); the `constraint-dependencies` block of pyproject.toml pins
that resolution to exactly the versions of `requirements.lock`.

    python .ci/lock.py            # re-compile both locks, then rewrite the block
    python .ci/lock.py --sync     # rewrite the block from the current requirements.lock
    python .ci/lock.py --check    # exit 1 if the block or the runtime lock disagrees
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
RUNTIME_LOCK = ROOT / "deploy" / "requirements-runtime.lock"
PYPROJECT = ROOT / "pyproject.toml"
BEGIN = "# BEGIN pins (python .ci/lock.py --sync)"
END = "# END pins"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def lock_pins(text: str) -> list[str]:
    """`name==version` of every package pinned in a requirements lock, in file order."""
    return [f"{m[1].lower()}=={m[2]}" for line in text.splitlines() if (m := _PIN.match(line))]


def lock_entries(text: str) -> dict[str, str]:
    """Each package's pin line and its hash lines (comments dropped), by package name."""
    entries: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if match := _PIN.match(line):
            name = match[1].lower()
            entries[name] = line.rstrip(" \\")
        elif name and line.strip().startswith("--hash="):
            entries[name] += " " + line.strip().rstrip(" \\")
    return entries


def runtime_lock_problems(dev_text: str, runtime_text: str) -> list[str]:
    """Why the runtime lock is not a hashed subset of the development lock (empty if it is)."""
    dev, runtime = lock_entries(dev_text), lock_entries(runtime_text)
    problems = [f"{name}: not in requirements.lock" for name in runtime if name not in dev]
    problems += [
        f"{name}: pinned or hashed differently from requirements.lock"
        for name, entry in runtime.items()
        if name in dev and entry != dev[name]
    ]
    problems += [f"{name}: no hash" for name, entry in runtime.items() if "--hash=" not in entry]
    if not runtime:
        problems.append("no package pinned")
    return problems


def compile_locks() -> None:
    """The development lock, then the runtime lock constrained to its versions."""
    common = ("--generate-hashes", "--no-header", "--python-version", "3.11")
    subprocess.run(
        [
            "uv",
            "pip",
            "compile",
            "-q",
            "pyproject.toml",
            "--group",
            "dev",
            *common,
            "-o",
            str(LOCK),
        ],
        cwd=ROOT,
        check=True,
    )
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
        constraints.write("\n".join(lock_pins(LOCK.read_text())) + "\n")
        constraints.flush()
        subprocess.run(
            [
                *("uv", "pip", "compile", "-q", "pyproject.toml", *common),
                *("-c", constraints.name, "-o", str(RUNTIME_LOCK.relative_to(ROOT))),
            ],
            cwd=ROOT,
            check=True,
        )
    # uv names the temporary constraints file as the origin of every pin: say what it was.
    RUNTIME_LOCK.write_text(
        RUNTIME_LOCK.read_text().replace(constraints.name, "requirements.lock (pins)")
    )


def block(pins: list[str]) -> str:
    """The generated `constraint-dependencies` lines, between their markers."""
    body = "".join(f'    "{pin}",\n' for pin in pins)
    return f"{BEGIN}\nconstraint-dependencies = [\n{body}]\n{END}"


def current_block(text: str) -> str:
    """The generated block as it stands in pyproject.toml."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def main(argv: list[str]) -> int:
    """Compile, sync or check; see the module docstring."""
    if not argv:
        compile_locks()
    wanted = block(lock_pins(LOCK.read_text()))
    text = PYPROJECT.read_text()
    if argv == ["--check"]:
        status = 0
        if current_block(text) != wanted:
            print("pyproject.toml's pins differ from requirements.lock: python .ci/lock.py --sync")
            status = 1
        for problem in runtime_lock_problems(LOCK.read_text(), RUNTIME_LOCK.read_text()):
            print(f"{RUNTIME_LOCK.relative_to(ROOT)}: {problem} (python .ci/lock.py)")
            status = 1
        return status
    PYPROJECT.write_text(text.replace(current_block(text), wanted))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
