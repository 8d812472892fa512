"""The cache generations of the current request, read once for two layers.

The response cache needs the generation of each cached kind as read after the request
arrived. When rate limits are on, the limiter's batched script is such a read: it reads the
generations with the charges (`RateLimitMiddleware`), and the response cache behind it takes
them from here instead of making a round trip of its own (`GenerationFence`). The pipeline
(`service.http.pipeline`) hands the same `RequestGenerations` to both layers.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from service.caching.generations import KINDS


class RequestGenerations:
    """Generations by kind for the request being served (a ContextVar: one value per task)."""

    kinds: tuple[str, ...] = KINDS

    def __init__(self) -> None:
        self._current: ContextVar[dict[str, str] | None] = ContextVar(
            "conduit_request_generations", default=None
        )

    def provide(self, values: dict[str, str] | None) -> Token[dict[str, str] | None]:
        """Make `values` the current request's generations; `withdraw` the token after it.

        A plain set/reset pair rather than a context manager: it runs on every request, and
        the generator machinery of `contextlib.contextmanager` costs more than the rest of it.
        """
        return self._current.set(values)

    def withdraw(self, token: Token[dict[str, str] | None]) -> None:
        """Undo the `provide` that returned `token`."""
        self._current.reset(token)

    def current(self) -> dict[str, str] | None:
        """The generations a layer in front read for this request, or None."""
        return self._current.get()
