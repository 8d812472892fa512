"""Async SQLAlchemy engine per app and one `AsyncSession` per request (unit of work)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from sqlalchemy import event, exc, text
from sqlalchemy.engine import Dialect, ExceptionContext
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from service.infra import greenlets, tracing
from service.infra.extensions import Extension
from service.infra.lifecycle import StartupError, register_lifespan
from service.infra.settings import Settings, mask_url

logger = logging.getLogger("conduit.db")


@dataclass
class _UnitOfWork:
    autocommit: bool = False
    session: AsyncSession | None = None


class DatabaseUnavailable(ConnectionError):
    """A new database connection could not be opened (refused, unresolvable, timed out)."""


CommitHook = Callable[[AsyncSession], Awaitable[None]]


def _clean(session: AsyncSession) -> bool:
    """Whether `session` holds no change to flush."""
    return not (session.new or session.dirty or session.deleted)


_current: ContextVar[_UnitOfWork | None] = ContextVar("conduit_unit_of_work", default=None)


# When a pooled connection was last returned (`ConnectionPoolEntry.info`).
_RETURNED_AT = "conduit.returned_at"


def build_engine(settings: Settings, url: str) -> AsyncEngine:
    """Create the process's async engine with pool limits and a statement timeout.

    With `DB_POOL_PRE_PING`, a connection is checked before use only when it sat in the pool
    for `DB_PING_AFTER_IDLE_SECONDS` or more: a connection that a server restart or an idle
    timeout killed is replaced before a request meets it, while a busy pool pays nothing (the
    asyncpg dialect's ping is three round trips: BEGIN, an empty query, ROLLBACK).
    """
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=1800,
        connect_args=_connect_args(settings),
    )
    event.listen(engine.sync_engine, "do_connect", _connect)
    if tracing.enabled():
        tracing.instrument_engine(engine.sync_engine)
    event.listen(engine.sync_engine, "handle_error", _command_timed_out)
    if settings.db_pool_pre_ping:
        idle = settings.db_ping_after_idle_seconds
        event.listen(engine.sync_engine, "checkin", _note_returned)
        event.listen(
            engine.sync_engine,
            "checkout",
            lambda dbapi_conn, record, _proxy: _ping_if_idle(dbapi_conn, record, idle),
        )
    return engine


def _connect_args(settings: Settings) -> dict[str, Any]:
    """asyncpg's connection arguments; with `DB_PGBOUNCER`, those safe under transaction pooling.

    PgBouncer in transaction mode hands each transaction to any server connection, and
    PgBouncer < 1.21 does not carry prepared statements across them. So behind it: no cached
    statements (asyncpg's `statement_cache_size`, SQLAlchemy's
    `prepared_statement_cache_size`), and every statement unnamed (an empty
    `prepared_statement_name_func`): a named one would be left on a server connection that
    a later transaction may not get, and names counted per client connection collide on a
    shared server one. Each Parse replaces the previous unnamed statement, so nothing piles
    up on the servers. asyncpg prepares and executes in two round trips; it ends the first
    with Flush, not Sync, so PgBouncer keeps the server connection until the second (checked
    with 1.18). Reads still run in a transaction (`DatabaseState.startup`) rather than rely
    on that: a Sync between the two would let a Bind reach another client's unnamed
    statement on another server connection.
    PgBouncer refuses startup parameters it does not know, so `statement_timeout` and `jit`
    are the server's business then (the role's defaults, docs/operations.md).
    """
    args: dict[str, Any] = {
        "timeout": settings.db_connect_timeout,
        # asyncpg's own timer on each command (no asyncio.wait_for per call): a frozen
        # server cannot hold a request longer than this.
        "command_timeout": settings.db_command_timeout,
    }
    if settings.db_pgbouncer:
        return args | {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": _unnamed,
            "server_settings": {"application_name": "conduit"},
        }
    return args | {
        # The API runs ~180 distinct statements; the default cache of 100 keeps evicting.
        "prepared_statement_cache_size": 256,
        "server_settings": {
            "statement_timeout": str(settings.db_statement_timeout_ms),
            "application_name": "conduit",
            # Short OLTP queries: JIT compilation only adds latency.
            "jit": "off",
        },
    }


def _unnamed() -> str:
    return ""


def _note_returned(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[_RETURNED_AT] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, idle: float) -> None:
    returned = record.info.get(_RETURNED_AT)
    if returned is None or time.monotonic() - returned < idle:
        return  # new, or in use a moment ago
    try:
        dbapi_connection.ping()
    except Exception as error:
        if isinstance(error, TimeoutError):
            # No answer within DB_COMMAND_TIMEOUT: count it dead, as a refused one.
            _abort(dbapi_connection)
        # The pool discards this connection and checks out another (SQLAlchemy's own
        # pessimistic-disconnect recipe).
        raise exc.DisconnectionError(describe_error(error)) from error


def _abort(dbapi_connection: Any) -> None:
    # A connection whose command timed out is mid-conversation with a server that does not
    # answer: close its socket now. A graceful close would wait on that server again (2 s
    # in SQLAlchemy's asyncpg dialect) before the pool could replace it.
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None:
        driver.terminate()


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
    # The same pool, its connections in autocommit: no BEGIN and no COMMIT round trips.
    autocommit_engine: AsyncEngine | None = None
    sessionmaker: async_sessionmaker[AsyncSession] | None = field(default=None, repr=False)
    # Awaited after each request's commit, with the committed session (see `Database.on_commit`).
    commit_hooks: list[CommitHook] = field(default_factory=list, repr=False)

    async def startup(self) -> None:
        """Create the engine on the running loop and check that the database answers."""
        self.engine = build_engine(self.settings, self.url)
        # Behind PgBouncer a statement outside a transaction may be prepared on one server
        # connection and executed on another (`_connect_args`): reads take a transaction.
        self.autocommit_engine = (
            self.engine
            if self.settings.db_pgbouncer
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        try:
            async with self.engine.connect() as conn:
                statement_timeout = await conn.scalar(
                    text("SELECT current_setting('statement_timeout')")
                )
        except Exception as exc:
            await self.engine.dispose()
            raise StartupError(
                f"database unreachable at {mask_url(self.url)}: {describe_error(exc)}"
            ) from exc
        if self.settings.db_pgbouncer and statement_timeout == "0":
            logger.warning(
                "no statement_timeout on the server connections behind PgBouncer: set the "
                "role's default (ALTER ROLE ... SET statement_timeout = '%sms')",
                self.settings.db_statement_timeout_ms,
            )

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
        greenlets.use_with_sqlalchemy()
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
            state = self.state()
            if state.sessionmaker is None:
                raise RuntimeError("database session used before lifespan startup")
            uow.session = (
                state.sessionmaker(bind=state.autocommit_engine)
                if uow.autocommit
                else state.sessionmaker()
            )
        return uow.session

    @asynccontextmanager
    async def unit_of_work(self, *, autocommit: bool = False) -> AsyncIterator[None]:
        """Scope one request: commit once if it succeeds, roll back if it raises.

        `autocommit` is for requests that only read (GET, HEAD): each statement runs on its
        own, which at PostgreSQL's READ COMMITTED is what a transaction's statements see
        anyway, and the BEGIN and COMMIT round trips are saved.
        """
        uow = _UnitOfWork(autocommit=autocommit)
        token = _current.set(uow)
        try:
            yield
            session = uow.session
            if session is not None and session.in_transaction():
                # In autocommit each statement has committed already: a read that left the
                # session clean has nothing to flush, and skips the commit's bookkeeping.
                if not (autocommit and _clean(session)):
                    await session.commit()
                for hook in self.state().commit_hooks:
                    try:
                        await hook(session)
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
