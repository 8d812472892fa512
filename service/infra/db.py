"""Async SQLAlchemy engine per app and one `AsyncSession` per request (unit of work)."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from sqlalchemy import event, text
from sqlalchemy.engine import Dialect, ExceptionContext
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from service.infra.extensions import Extension
from service.infra.lifecycle import StartupError, register_lifespan
from service.infra.settings import Settings, mask_url

logger = logging.getLogger("conduit.db")


@dataclass
class _UnitOfWork:
    session: AsyncSession | None = None


class DatabaseUnavailable(ConnectionError):
    """A new database connection could not be opened (refused, unresolvable, timed out)."""


CommitHook = Callable[[AsyncSession], Awaitable[None]]

_current: ContextVar[_UnitOfWork | None] = ContextVar("conduit_unit_of_work", default=None)


def build_engine(settings: Settings, url: str) -> AsyncEngine:
    """Create the process's async engine with pool limits and a statement timeout."""
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_pre_ping=settings.db_pool_pre_ping,
        pool_recycle=1800,
        connect_args={
            "timeout": settings.db_connect_timeout,
            # asyncpg's own timer on each command (no asyncio.wait_for per call): a frozen
            # server cannot hold a request longer than this.
            "command_timeout": settings.db_command_timeout,
            # The API runs ~180 distinct statements; the default cache of 100 keeps evicting.
            "prepared_statement_cache_size": 256,
            "server_settings": {
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "application_name": "conduit",
                # Short OLTP queries: JIT compilation only adds latency.
                "jit": "off",
            },
        },
    )
    event.listen(engine.sync_engine, "do_connect", _connect)
    event.listen(engine.sync_engine, "handle_error", _command_timed_out)
    dialect = engine.sync_engine.dialect
    dialect.do_ping = functools.partial(_ping, dialect.do_ping)  # type: ignore[method-assign]
    return engine


def _abort(dbapi_connection: Any) -> None:
    # A connection whose command timed out is mid-conversation with a server that does not
    # answer: close its socket now. A graceful close would wait on that server again (2 s
    # in SQLAlchemy's asyncpg dialect) before the pool could replace it.
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None:
        driver.terminate()


def _ping(ping: Callable[[Any], bool], dbapi_connection: Any) -> bool:
    # The pre-ping's own timeout: a pooled connection that does not answer counts as dead
    # (the pool opens a new one, bounded by the connect timeout), as a refused one does.
    try:
        return ping(dbapi_connection)
    except TimeoutError:
        _abort(dbapi_connection)
        return False


def _command_timed_out(context: ExceptionContext) -> None:
    # asyncpg's command_timeout surfaces as a bare TimeoutError, which SQLAlchemy passes on
    # unwrapped. The server never answered (frozen, partitioned): drop that one connection
    # and name the database as what is unavailable (503).
    error = context.original_exception
    if isinstance(error, TimeoutError):
        if context.connection is not None and not context.connection.invalidated:
            _abort(context.connection.connection)
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = False
        raise DatabaseUnavailable(f"no answer from the database: {describe_error(error)}")


def _connect(dialect: Dialect, _record: object, cargs: Any, cparams: Any) -> Any:
    # asyncpg's connect errors (OSError, TimeoutError) reach the caller unwrapped by
    # SQLAlchemy; name them so the error mapping answers "database unavailable".
    try:
        return dialect.connect(*cargs, **cparams)
    except (OSError, TimeoutError) as exc:
        raise DatabaseUnavailable(describe_error(exc)) from exc


@dataclass
class DatabaseState:
    """The engine and session factory of one app, opened on the serving loop."""

    settings: Settings
    url: str
    engine: AsyncEngine | None = None
    sessionmaker: async_sessionmaker[AsyncSession] | None = field(default=None, repr=False)
    # Awaited after each request's commit, with the committed session (see `Database.on_commit`).
    commit_hooks: list[CommitHook] = field(default_factory=list, repr=False)

    async def startup(self) -> None:
        """Create the engine on the running loop and check that the database answers."""
        self.engine = build_engine(self.settings, self.url)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            await self.engine.dispose()
            raise StartupError(
                f"database unreachable at {mask_url(self.url)}: {describe_error(exc)}"
            ) from exc

    async def shutdown(self) -> None:
        """Close every pooled connection."""
        if self.engine is not None:
            await self.engine.dispose()


def describe_error(exc: BaseException) -> str:
    """One line naming an exception, without a traceback."""
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}".strip()


DATABASE: Extension[DatabaseState] = Extension("conduit.db")


class Database:
    """Flask extension: `db.session` is the request's session, committed once on success."""

    def init_app(self, app: Flask, settings: Settings, url: str) -> None:
        """Bind an engine (opened at lifespan startup) to `app`."""
        register_lifespan(app, DATABASE.bind(app, DatabaseState(settings=settings, url=url)))

    def state(self, app: Flask | None = None) -> DatabaseState:
        """The app's database state."""
        return DATABASE.get(app)

    def on_commit(self, app: Flask, hook: CommitHook) -> None:
        """Await `hook(session)` after every request of `app` that committed.

        For side effects that must follow the commit (publishing revocations, invalidating
        caches): services leave notes in `session.info`, a hook acts on them. A failing hook is
        logged; the request has already succeeded.
        """
        self.state(app).commit_hooks.append(hook)

    @property
    def engine(self) -> AsyncEngine:
        """The current app's engine; only valid after startup."""
        engine = self.state().engine
        if engine is None:
            raise RuntimeError("database engine used before lifespan startup")
        return engine

    @property
    def session(self) -> AsyncSession:
        """The request's session, opened on first use."""
        uow = _current.get()
        if uow is None:
            raise RuntimeError("db.session used outside a unit of work")
        if uow.session is None:
            maker = self.state().sessionmaker
            if maker is None:
                raise RuntimeError("database session used before lifespan startup")
            uow.session = maker()
        return uow.session

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[None]:
        """Scope one request: commit once if it succeeds, roll back if it raises."""
        uow = _UnitOfWork()
        token = _current.set(uow)
        try:
            yield
            if uow.session is not None and uow.session.in_transaction():
                await uow.session.commit()
                for hook in self.state().commit_hooks:
                    try:
                        await hook(uow.session)
                    except Exception:
                        logger.exception("after-commit hook %s failed", hook.__qualname__)
        except BaseException:
            if uow.session is not None:
                try:
                    await uow.session.rollback()
                except Exception as exc:  # the connection may already be gone
                    logger.warning("rollback failed: %s", describe_error(exc))
            raise
        finally:
            if uow.session is not None:
                await uow.session.close()
            _current.reset(token)


db = Database()
