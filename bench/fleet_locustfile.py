"""The shipped Locust scenarios, with every request written to a log for `bench/fleet.py`.

Locust's own statistics count failures by route, not when they happened. The fleet test needs
each request's start time, method and outcome (which requests failed before and after the load
balancer took an instance out), so this adds one listener to `tests/load/locustfile.py` and
nothing else: one JSON array per line, `[start, method, name, status, error or null, milliseconds]`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from locust import events

from tests.load.locustfile import *  # noqa: F403  (the visitors themselves)

_LOG = open(os.environ["FLEET_REQUEST_LOG"], "a", buffering=1)  # noqa: SIM115 (whole run)


@events.request.add_listener
def _record(
    request_type: str,
    name: str,
    response_time: float,
    exception: BaseException | None = None,
    response: Any = None,
    start_time: float | None = None,
    **_: Any,
) -> None:
    started = start_time if start_time is not None else time.time() - response_time / 1000
    status = getattr(response, "status_code", 0) or 0
    error = None if exception is None else f"{type(exception).__name__}: {exception}"[:300]
    _LOG.write(json.dumps([started, request_type, name, status, error, response_time]) + "\n")
