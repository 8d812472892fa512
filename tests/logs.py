"""Capturing the service's JSON log lines in tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, TypeVar

import orjson

from service.infra.observability import JsonFormatter

HandlerT = TypeVar("HandlerT", bound=logging.Handler)


class JsonLines(logging.Handler):
    """Formats records as the service does, at emit time (the request id is read then)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


def attached(handler: HandlerT, logger_name: str) -> Iterator[HandlerT]:
    """For a fixture: `handler` on the logger, at INFO, while it yields; both undone after."""
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.setLevel(previous)
    logger.removeHandler(handler)
