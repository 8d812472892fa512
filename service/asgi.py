"""The ASGI app Hypercorn serves: `hypercorn --config hypercorn.toml service.asgi:app`."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from service.app import ConduitASGI, create_asgi
from service.infra.observability import configure_logging
from service.infra.settings import Environment, describe_settings_error, load_settings


def _from_environment() -> ConduitASGI:
    try:
        settings = load_settings()
        configure_logging(
            settings.log_level,
            log_format=settings.log_format,
            development=settings.app_env is Environment.DEVELOPMENT,
        )
        return create_asgi(settings)
    except ValidationError as exc:
        print(f"conduit: invalid configuration: {describe_settings_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as exc:
        print(f"conduit: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


app = _from_environment()
