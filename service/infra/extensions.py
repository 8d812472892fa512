"""Typed access to what the app keeps in `Flask.extensions`: one key, one type, one place.

Each extension is declared once (`Extension[T]("conduit.db")`) next to the code that owns it;
`bind` stores it on an app and `get` reads it back typed, so no caller spells the key or
casts what it finds.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

from flask import Flask, current_app

from service.infra.settings import Settings

T = TypeVar("T")


class Extension(Generic[T]):
    """One typed slot of `Flask.extensions`, under `key`."""

    def __init__(self, key: str) -> None:
        self.key = key

    def bind(self, app: Flask, value: T) -> T:
        """Store `value` on `app`; returns it."""
        self._slots(app)[self.key] = value
        return value

    def get(self, app: Flask | None = None) -> T:
        """The value bound to `app` (default: the current app); KeyError when unbound."""
        return cast(T, self._slots(app or current_app)[self.key])

    def find(self, app: Flask | None = None) -> T | None:
        """The value bound to `app` (default: the current app), or None when unbound."""
        return cast(T | None, self._slots(app or current_app).get(self.key))

    def _slots(self, app: Flask) -> dict[str, Any]:
        return app.extensions

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"


class ConfigEntry(Extension[T]):
    """One typed entry of `Flask.config`, under `key` (for values tests swap per app)."""

    def _slots(self, app: Flask) -> dict[str, Any]:
        return app.config


# The app's validated settings (`service.app.create_app` binds them).
SETTINGS: ConfigEntry[Settings] = ConfigEntry("CONDUIT_SETTINGS")
