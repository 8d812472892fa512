"""Capturing the service's JSON log lines in tests."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from service.observability import JsonFormatter


class JsonLines(logging.Handler):
    """Formats records as the service does, at emit time (the request id is read then)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))
