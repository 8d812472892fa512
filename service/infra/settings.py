"""Service settings, read from the environment and validated at start."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.infra.address_policy import AddressPolicy
from service.infra.secret_box import SecretBox, box_for, generate_key, parse_keys

# Values that look like a secret but are copied from examples; refused outside development.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "secret", "dev", "development", "placeholder", "xxx", "todo"}
)
MIN_SECRET_LENGTH = 32
WEBHOOK_KEYS_REQUIRED = (
    "WEBHOOK_SECRET_KEYS must be set in production (comma-separated Fernet keys: "
    "`conduit webhooks generate-key` makes one)"
)

# The OTEL_TRACES_SAMPLER values of the OpenTelemetry specification that the SDK implements.
TRACES_SAMPLERS = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)


class Environment(StrEnum):
    """Where the service runs; production turns every safety check on."""

    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


def normalise_database_url(url: str) -> str:
    """Return `url` with the asyncpg driver, accepting the plain `postgresql://` forms."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("must be a PostgreSQL URL (postgresql://user:pass@host:port/db)")


def split_list(value: str) -> list[str]:
    """The items of a comma-separated setting, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def mask_url(url: str) -> str:
    """Return `url` with any password replaced by `***`, safe for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0] + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[1]}"))


class Settings(BaseSettings):
    """All configuration, one field per environment variable (same name, upper case)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    app_env: Environment = Environment.DEVELOPMENT
    database_url: str | None = None
    redis_url: str | None = None
    secret_key: SecretStr | None = None

    data_dir: Path = Path(".conduit")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Prometheus metrics on a listener of their own, never the API port (0: off, and then no
    # metrics middleware at all). With `--workers N` the supervisor serves the sum over them.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # The same for `conduit worker` (webhook deliveries; 0: off): a port of its own, as a
    # worker often runs on the same host as `conduit serve`.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    # OpenTelemetry tracing (service/infra/tracing.py), by the standard OTEL_* variables: on
    # when an OTLP endpoint is set and OTEL_SDK_DISABLED is not true. The exporter reads its
    # other variables (OTEL_EXPORTER_OTLP_HEADERS, timeouts, certificates) itself.
    otel_exporter_otlp_endpoint: str | None = None
    otel_exporter_otlp_traces_endpoint: str | None = None
    otel_exporter_otlp_protocol: str | None = None
    otel_exporter_otlp_traces_protocol: str | None = None
    otel_sdk_disabled: bool = False
    otel_service_name: str = Field(default="conduit", min_length=1, max_length=255)
    otel_traces_sampler: str = "parentbased_always_on"
    otel_traces_sampler_arg: float | None = Field(default=None, ge=0, le=1)

    # Requests in Flask at once per process (historically threads: each now runs in a greenlet
    # on the event loop's thread). Requests beyond it wait in the adapter's queue, first come
    # first served.
    threads: int = Field(default=32, ge=1, le=1024)
    # Database connections per process; 0 means one per thread (`threads`). The pool must
    # cover the threads, so that no request in the app waits for a connection (and times out
    # with 503 under load: docs/performance.md). The overflow is headroom for rare second
    # connections (readiness checks).
    db_pool_size: int = Field(default=0, ge=0, le=1000)
    db_max_overflow: int = Field(default=4, ge=0, le=500)
    db_pool_timeout: float = Field(default=5.0, gt=0)
    db_statement_timeout_ms: int = Field(default=5000, ge=0)
    db_connect_timeout: float = Field(default=5.0, gt=0)
    # Client-side bound on every database command (asyncpg's protocol timer, no per-call
    # wrapper): a frozen or unreachable server costs this, then 503. Above the statement
    # timeout, so that a merely slow query is cancelled by the server, keeping the connection.
    db_command_timeout: float = Field(default=6.0, gt=0)
    db_pool_pre_ping: bool = True
    # DATABASE_URL is a PgBouncer in transaction mode (or another transaction pooler without
    # prepared-statement tracking, such as PgBouncer < 1.21): unnamed prepared statements, no
    # statement caches, reads in a transaction, no startup parameters but application_name
    # (docs/operations.md, "PgBouncer"). For the API only: `conduit migrate` and `conduit
    # worker` need a session of their own (advisory lock, LISTEN), so PostgreSQL itself.
    db_pgbouncer: bool = False
    # A pooled connection idle this long is pinged before use (`service.infra.db.build_engine`).
    db_ping_after_idle_seconds: float = Field(default=1.0, ge=0)
    redis_max_connections: int = Field(default=64, ge=1, le=10_000)
    redis_socket_timeout: float = Field(default=1.0, gt=0)

    # argon2id parameters (OWASP minimum by default) and how many hashes may run at once.
    password_time_cost: int = Field(default=2, ge=1, le=20)
    password_memory_kib: int = Field(default=19_456, ge=8_192, le=1_048_576)
    password_parallelism: int = Field(default=1, ge=1, le=16)
    password_max_concurrent: int = Field(default=4, ge=1, le=64)
    access_token_minutes: int = Field(default=60 * 24, ge=1, le=60 * 24 * 30)
    # Access tokens of the OAuth token endpoint are short-lived: refresh tokens renew them.
    oauth_access_token_minutes: int = Field(default=15, ge=1, le=60 * 24)
    # Lifetime of a sign-in session (refresh-token family) and the reuse grace window.
    refresh_token_days: int = Field(default=30, ge=1, le=365)
    refresh_reuse_grace_seconds: int = Field(default=30, ge=0, le=600)
    password_reset_minutes: int = Field(default=60, ge=5, le=24 * 60)

    # Outgoing mail: smtp://user:pass@host:port or smtps://...; unset writes mail to the log
    # and to `data_dir/mail` (development only).
    smtp_url: str | None = None
    mail_from: str = "Conduit <no-reply@conduit.localhost>"
    # Link in password reset mails; `{token}` is replaced by the reset token.
    password_reset_url: str = "http://127.0.0.1:8000/reset-password?token={token}"  # noqa: S105
    # Run the job worker inside `conduit serve` (on by default with the zero-config databases).
    worker_in_process: bool | None = None
    worker_concurrency: int = Field(default=4, ge=1, le=64)

    # Rate limits (requests per window, per client IP or per authenticated principal).
    rate_limit_enabled: bool = True
    rate_limit_anonymous_per_minute: int = Field(default=300, ge=1)
    rate_limit_authenticated_per_minute: int = Field(default=1200, ge=1)
    rate_limit_auth_per_minute: int = Field(default=10, ge=1)
    # Addresses of reverse proxies whose X-Forwarded-For is believed (comma-separated IPs/CIDRs).
    trusted_proxies: str = ""

    # CORS: comma-separated allowed origins ("" = no cross-origin access).
    cors_origins: str = ""

    # Read-through cache of shared answers in Redis (see service/caching/store.py).
    cache_enabled: bool = True
    cache_ttl_seconds: int = Field(default=300, ge=1, le=86_400)
    # A cache read that takes longer falls through to the database. It bounds a hung Redis;
    # much lower and a busy event loop (whose delays count too) passes for a slow Redis and
    # sends reads to the far costlier database when the process is already loaded
    # (docs/performance.md: 100 ms did that under wrk).
    cache_timeout_ms: int = Field(default=500, ge=1, le=5000)
    # Whole answers to anonymous reads, served before Flask (service/http/response_cache.py); only
    # with the cache on.
    response_cache_enabled: bool = True
    # PostgreSQL text search configuration of article search (`GET /articles?q=`). The GIN
    # index is built for it by migration 0007: changing it means rebuilding that index.
    search_language: str = Field(default="english", pattern=r"^[a-z_]{1,63}$")

    # Webhooks. Plain http targets: unset means allowed outside production only.
    webhook_allow_http: bool | None = None
    # Addresses/networks exempt from the SSRF guard (comma-separated IPs or CIDRs), e.g. a
    # receiver on the same private network. Host names are not accepted.
    webhook_allowlist: str = ""
    webhook_timeout_seconds: float = Field(default=15.0, gt=0, le=60)
    webhook_max_response_bytes: int = Field(default=65_536, ge=1024)
    webhook_response_excerpt_bytes: int = Field(default=1024, ge=0, le=65_536)
    # Deliveries to one endpoint in flight at once per worker process.
    webhook_endpoint_concurrency: int = Field(default=4, ge=1, le=64)
    # Deliveries in flight at once per worker process, in slots of their own beside
    # WORKER_CONCURRENCY (they mostly wait on the network).
    webhook_delivery_concurrency: int = Field(default=32, ge=1, le=256)
    # Days the delivery log (events, messages, attempts) is kept; see service/webhooks/retention.
    webhook_retention_days: int = Field(default=30, ge=1, le=3650)
    # Fernet keys sealing the signing secrets in the database, comma-separated: the first seals,
    # all open (rotation: docs/webhooks.md). Required in production; elsewhere a key is
    # generated once into `data_dir`.
    webhook_secret_keys: SecretStr | None = None

    # How long a stored answer of an `Idempotency-Key` is replayed (service/api/idempotency.py).
    idempotency_retention_hours: int = Field(default=24, ge=1, le=24 * 30)
    # Refuse PUT/PATCH/DELETE of articles, comments and the user without `If-Match` (428). Off
    # by default: RealWorld clients send none.
    precondition_required: bool = False

    max_body_bytes: int = Field(default=2_097_152, ge=1024)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    # After SIGTERM, keep accepting connections this long while /readyz answers 503, so that a
    # load balancer stops sending before the listener closes (0: close it at once).
    shutdown_delay_seconds: float = Field(default=0.0, ge=0, le=300)
    log_level: str = "INFO"
    # `json`: one object per line, for collectors; `text`: lines for people; `auto`: text in
    # development when stdout is a terminal, JSON otherwise (service/infra/observability.py).
    log_format: str = "auto"
    access_log: bool = True

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        return None if value in (None, "") else normalise_database_url(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint")
    @classmethod
    def _otlp_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        try:
            parts.port  # noqa: B018 (raises for a port that is not a number in range)
        except ValueError:
            valid = False
        else:
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        # An empty port ("host:") parses as none at all: the exporter would go to port 80.
        if not valid or parts.netloc.endswith(":"):
            raise ValueError("must be an http:// or https:// URL (the OTLP/HTTP exporter)")
        return value.strip()

    @field_validator("otel_exporter_otlp_protocol", "otel_exporter_otlp_traces_protocol")
    @classmethod
    def _otlp_protocol(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if value.strip() != "http/protobuf":
            raise ValueError("only http/protobuf is supported (the image has no gRPC exporter)")
        return value.strip()

    @field_validator("otel_traces_sampler")
    @classmethod
    def _traces_sampler(cls, value: str) -> str:
        sampler = value.strip().lower()
        if sampler not in TRACES_SAMPLERS:
            raise ValueError(f"must be one of {', '.join(sorted(TRACES_SAMPLERS))}")
        return sampler

    @property
    def tracing_enabled(self) -> bool:
        """Whether spans are recorded and exported (an OTLP endpoint is set, the SDK enabled)."""
        endpoint = self.otel_exporter_otlp_traces_endpoint or self.otel_exporter_otlp_endpoint
        return endpoint is not None and not self.otel_sdk_disabled

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        from service.infra.observability import LOG_FORMATS

        log_format = value.strip().lower()
        if log_format not in LOG_FORMATS:
            raise ValueError(f"must be one of {', '.join(sorted(LOG_FORMATS))}")
        return log_format

    @field_validator("webhook_allowlist")
    @classmethod
    def _webhook_allowlist(cls, value: str) -> str:
        AddressPolicy.build(allowlist=split_list(value))  # raises ValueError naming the entry
        return value

    @field_validator("webhook_secret_keys")
    @classmethod
    def _webhook_secret_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        parse_keys(value.get_secret_value())  # raises ValueError, never quoting a key
        return value

    @property
    def webhook_secret_box(self) -> SecretBox:
        """Seals and opens webhook signing secrets with WEBHOOK_SECRET_KEYS (outside
        production, when unset, with a key generated once into `data_dir`)."""
        if self.webhook_secret_keys is not None:
            return box_for(self.webhook_secret_keys.get_secret_value())
        if self.is_production:
            raise ValueError(WEBHOOK_KEYS_REQUIRED)
        return box_for(_dev_webhook_keys((self.data_dir / "webhook_secret_keys").resolve()))

    @property
    def webhook_policy(self) -> AddressPolicy:
        """The SSRF guard's settings."""
        allow_http = (
            self.webhook_allow_http
            if self.webhook_allow_http is not None
            else not self.is_production
        )
        return AddressPolicy.build(
            allow_http=allow_http, allowlist=split_list(self.webhook_allowlist)
        )

    @model_validator(mode="after")
    def _pool_covers_threads(self) -> Settings:
        if self.db_pool_size == 0:
            self.db_pool_size = self.threads
        if self.db_pool_size + self.db_max_overflow < self.threads:
            raise ValueError(
                f"DB_POOL_SIZE + DB_MAX_OVERFLOW ({self.db_pool_size} + {self.db_max_overflow}) "
                f"must be at least THREADS ({self.threads}): requests would wait for connections"
            )
        return self

    @model_validator(mode="after")
    def _metrics_port_of_its_own(self) -> Settings:
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError(
                "METRICS_PORT must differ from PORT: metrics have a listener of their own"
            )
        return self

    @model_validator(mode="after")
    def _production_secrets(self) -> Settings:
        if self.app_env is Environment.PRODUCTION:
            key = self.secret_key.get_secret_value() if self.secret_key else ""
            if key.strip().lower() in PLACEHOLDER_SECRETS or len(key) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"SECRET_KEY must be set to a random value of at least {MIN_SECRET_LENGTH} "
                    "characters in production"
                )
            if self.database_url is None or self.redis_url is None:
                raise ValueError("DATABASE_URL and REDIS_URL must be set in production")
        return self

    @model_validator(mode="after")
    def _production_webhook_keys(self) -> Settings:
        if self.is_production and self.webhook_secret_keys is None:
            raise ValueError(WEBHOOK_KEYS_REQUIRED)
        return self

    @property
    def is_production(self) -> bool:
        """True when running with every production safety check."""
        return self.app_env is Environment.PRODUCTION

    def with_dev_secret(self) -> Settings:
        """Return settings with a development secret, generated once and kept in `data_dir`."""
        if self.secret_key is not None:
            return self
        secret = _dev_secret(self.data_dir / "secret_key", lambda: secrets.token_urlsafe(48))
        return self.model_copy(update={"secret_key": SecretStr(secret)})

    def require(self) -> tuple[str, str, str]:
        """Return database URL, Redis URL and secret, or raise naming what is missing."""
        missing = [
            name
            for name, value in (
                ("DATABASE_URL", self.database_url),
                ("REDIS_URL", self.redis_url),
                ("SECRET_KEY", self.secret_key),
            )
            if value is None
        ]
        if missing:
            raise ValueError(
                f"{', '.join(missing)} not set (run `conduit serve` for the zero-config default)"
            )
        assert self.database_url is not None
        assert self.redis_url is not None
        assert self.secret_key is not None
        return self.database_url, self.redis_url, self.secret_key.get_secret_value()


def _dev_secret(path: Path, make: Callable[[], str]) -> str:
    """The development secret kept in `path`, made by `make` the first time."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_secret_once(path, make())
    return path.read_text().strip()


@functools.lru_cache(maxsize=8)
def _dev_webhook_keys(path: Path) -> str:
    # Read once per process: deliveries and webhook writes ask for the box on every call.
    return _dev_secret(path, generate_key)


def _write_secret_once(path: Path, value: str) -> None:
    # Written to a private (0600 from creation) temporary file, then hard-linked into place:
    # the secret is never readable by others nor seen half-written, and processes starting
    # together (several workers) all end up with the one secret that won the link.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(value)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def describe_settings_error(exc: ValidationError) -> str:
    """One line naming each bad variable, without echoing input values (they may be secrets)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        name = ".".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{name}: {message}" if name else message)
    return "; ".join(problems)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, with explicit overrides taking precedence."""
    return Settings(**overrides)
