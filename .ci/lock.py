"""Keep the two pinned views of the dependencies in step.

`requirements.lock` (hashed, no registry addresses) is what CI and the image install.
`uv run` resolves the project itself into an untracked `uv.lock` (which records registry
addresses, so it stays out of git); the `constraint-dependencies` block of pyproject.toml pins
that resolution to exactly the versions of `requirements.lock`.

    python .ci/lock.py            # re-compile requirements.lock, then rewrite the block
    python .ci/lock.py --sync     # rewrite the block from the current requirements.lock
    python .ci/lock.py --check    # exit 1 if the block and requirements.lock disagree
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
BEGIN = "# BEGIN pins (python .ci/lock.py --sync)"
END = "# END pins"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def lock_pins(text: str) -> list[str]:
    """`name==version` of every package pinned in a requirements lock, in file order."""
    return [f"{m[1].lower()}=={m[2]}" for line in text.splitlines() if (m := _PIN.match(line))]


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
        subprocess.run(
            [
                *("uv", "pip", "compile", "pyproject.toml", "--group", "dev"),
                *("--generate-hashes", "--no-header", "--python-version", "3.11"),
                *("-o", "requirements.lock"),
            ],
            cwd=ROOT,
            check=True,
        )
    wanted = block(lock_pins(LOCK.read_text()))
    text = PYPROJECT.read_text()
    if argv == ["--check"]:
        if current_block(text) != wanted:
            print("pyproject.toml's pins differ from requirements.lock: python .ci/lock.py --sync")
            return 1
        return 0
    PYPROJECT.write_text(text.replace(current_block(text), wanted))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
