"""The ASGI application that Hypercorn serves: `hypercorn --config hypercorn.toml service.asgi:app`."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from service.adapter import ConcurrentWsgiToAsgi
from service.app import ConduitFlask, create_app
from service.lifecycle import AppLifespan
from service.observability import configure_logging
from service.settings import Settings, load_settings


class ConduitASGI(ConcurrentWsgiToAsgi):
    """The served app: the Flask app behind the concurrent adapter."""

    def __init__(self, flask_app: ConduitFlask, settings: Settings) -> None:
        super().__init__(
            flask_app,
            threads=settings.threads,
            max_body_bytes=settings.max_body_bytes,
            lifespan=AppLifespan(flask_app),
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
        )
        self.flask_app = flask_app


def create_asgi(settings: Settings) -> ConduitASGI:
    """Build the served ASGI app for `settings`."""
    return ConduitASGI(create_app(settings), settings)


def _from_environment() -> ConduitASGI:
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        return create_asgi(settings)
    except (ValidationError, ValueError) as exc:
        print(f"conduit: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


app = _from_environment()
