"""The Conduit API service."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _installed_version() -> str:
    # pyproject.toml is the one place the version is written; the installed metadata carries
    # it (an editable install too). A source tree that was never installed has none.
    try:
        return version("conduit")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _installed_version()
