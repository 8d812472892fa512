"""Settings: URL normalisation, production safety checks, the development secret."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.infra.secret_box import SecretBox, UnreadableSecret, generate_key
from service.infra.settings import (
    MIN_SECRET_LENGTH,
    WEBHOOK_KEYS_REQUIRED,
    Environment,
    Settings,
    describe_settings_error,
    load_settings,
    mask_url,
)
from service.webhooks.signing import generate_secret
from tests.cli import ENV_VARIABLES

STRONG_SECRET = "k" * MIN_SECRET_LENGTH
VARIABLES = (*ENV_VARIABLES, "WEBHOOK_SECRET_KEYS")
WEBHOOK_KEY = generate_key()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def production(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "app_env": "production",
        "database_url": "postgresql://u:p@db/conduit",
        "redis_url": "redis://cache:6379/0",
        "secret_key": STRONG_SECRET,
        "webhook_secret_keys": WEBHOOK_KEY,
    }
    return Settings(**(values | overrides))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@db:5432/conduit",
        "postgres://u:p@db:5432/conduit",
        "postgresql+asyncpg://u:p@db:5432/conduit",
    ],
)
def test_database_url_forms_are_normalised_to_asyncpg(url: str) -> None:
    assert Settings(database_url=url).database_url == "postgresql+asyncpg://u:p@db:5432/conduit"


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:p@db/conduit",
        "postgresql+psycopg2://u:p@db/conduit",
        "sqlite:///conduit.db",
        "db:5432/conduit",
    ],
)
def test_other_database_schemes_are_rejected(url: str) -> None:
    with pytest.raises(ValidationError, match="must be a PostgreSQL URL"):
        Settings(database_url=url)


def test_empty_urls_mean_unset() -> None:
    settings = Settings(database_url="", redis_url="")
    assert settings.database_url is None
    assert settings.redis_url is None


def test_database_url_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://env@db/conduit")
    assert load_settings().database_url == "postgresql+asyncpg://env@db/conduit"


@pytest.mark.parametrize(
    "url", ["redis://cache:6379/0", "rediss://:pw@cache:6380/1", "unix:///tmp/redis.sock?db=2"]
)
def test_redis_url_schemes_are_accepted(url: str) -> None:
    assert Settings(redis_url=url).redis_url == url


@pytest.mark.parametrize("url", ["http://cache:6379", "cache:6379", "memcached://cache"])
def test_other_redis_schemes_are_rejected(url: str) -> None:
    with pytest.raises(ValidationError, match=r"must be a redis://, rediss:// or unix:// URL"):
        Settings(redis_url=url)


def test_production_accepts_complete_settings() -> None:
    settings = production()
    assert settings.is_production
    assert settings.require() == (
        "postgresql+asyncpg://u:p@db/conduit",
        "redis://cache:6379/0",
        STRONG_SECRET,
    )


@pytest.mark.parametrize(
    "secret",
    [None, "", "changeme", "  Secret ", "x" * (MIN_SECRET_LENGTH - 1)],
    ids=["missing", "empty", "placeholder", "placeholder-padded", "short"],
)
def test_production_refuses_weak_secrets(secret: str | None) -> None:
    with pytest.raises(ValidationError) as caught:
        production(secret_key=secret)
    message = describe_settings_error(caught.value)
    assert message == (
        f"SECRET_KEY must be set to a random value of at least {MIN_SECRET_LENGTH} "
        "characters in production"
    )


@pytest.mark.parametrize("missing", ["database_url", "redis_url"])
def test_production_refuses_missing_urls(missing: str) -> None:
    with pytest.raises(ValidationError) as caught:
        production(**{missing: None})
    assert describe_settings_error(caught.value) == (
        "DATABASE_URL and REDIS_URL must be set in production"
    )


@pytest.mark.parametrize("keys", [None, "", "  "], ids=["missing", "empty", "blank"])
def test_production_refuses_missing_webhook_secret_keys(keys: str | None) -> None:
    with pytest.raises(ValidationError) as caught:
        production(webhook_secret_keys=keys)
    assert describe_settings_error(caught.value) == WEBHOOK_KEYS_REQUIRED
    assert WEBHOOK_KEYS_REQUIRED.startswith("WEBHOOK_SECRET_KEYS must be set in production")


def test_production_refuses_missing_webhook_secret_keys_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in (
        ("APP_ENV", "production"),
        ("DATABASE_URL", "postgresql://u:p@db/conduit"),
        ("REDIS_URL", "redis://cache:6379/0"),
        ("SECRET_KEY", STRONG_SECRET),
    ):
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET_KEYS must be set in production"):
        load_settings()
    monkeypatch.setenv("WEBHOOK_SECRET_KEYS", f"{generate_key()},{WEBHOOK_KEY}")
    secret = generate_secret()
    box = load_settings().webhook_secret_box
    # The first key seals, every key opens.
    assert box.open(SecretBox([WEBHOOK_KEY]).seal(secret)) == secret
    with pytest.raises(UnreadableSecret):
        SecretBox([WEBHOOK_KEY]).open(box.seal(secret))


@pytest.mark.parametrize("env", ["production", "development"])
def test_malformed_webhook_secret_keys_are_refused_without_echo(env: str) -> None:
    with pytest.raises(ValidationError) as caught:
        production(app_env=env, webhook_secret_keys=f"{WEBHOOK_KEY},hunter2")
    message = describe_settings_error(caught.value)
    assert message.startswith("WEBHOOK_SECRET_KEYS: key 2 of 2 is not a Fernet key")
    assert "hunter2" not in message
    assert WEBHOOK_KEY not in message


def test_settings_errors_never_echo_the_input() -> None:
    with pytest.raises(ValidationError) as caught:
        production(secret_key="hunter2", database_url="postgresql://u:topsecret@db/x")
    message = describe_settings_error(caught.value)
    assert "hunter2" not in message
    assert "topsecret" not in message
    assert "\n" not in message


def test_field_errors_name_the_variable() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(threads=0, redis_url="http://x")  # type: ignore[arg-type]
    message = describe_settings_error(caught.value)
    assert "THREADS: Input should be greater than or equal to 1" in message
    assert "REDIS_URL: must be a redis://, rediss:// or unix:// URL" in message


def test_the_database_pool_covers_the_threads_by_default_and_must_cover_them() -> None:
    assert Settings().db_pool_size == Settings().threads == 32
    assert Settings(threads=50).db_pool_size == 50
    assert Settings(threads=8, db_pool_size=6, db_max_overflow=2).db_pool_size == 6
    with pytest.raises(ValidationError) as caught:
        Settings(threads=64, db_pool_size=20, db_max_overflow=10)
    message = describe_settings_error(caught.value)
    assert "DB_POOL_SIZE + DB_MAX_OVERFLOW (20 + 10) must be at least THREADS (64)" in message


def test_development_generates_a_private_secret_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir)
    assert settings.secret_key is None
    first = settings.with_dev_secret()
    assert first.secret_key is not None
    secret = first.secret_key.get_secret_value()
    assert len(secret) >= MIN_SECRET_LENGTH
    path = data_dir / "secret_key"
    assert path.read_text() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Reused by the next start, and no temporary files left behind.
    again = Settings(data_dir=data_dir).with_dev_secret()
    assert again.secret_key is not None
    assert again.secret_key.get_secret_value() == secret
    assert os.listdir(data_dir) == ["secret_key"]


def test_concurrent_first_starts_agree_on_one_secret(tmp_path: Path) -> None:
    start = threading.Barrier(8)
    secrets: list[str] = []

    def first_start() -> None:
        start.wait()
        key = Settings(data_dir=tmp_path).with_dev_secret().secret_key
        assert key is not None
        secrets.append(key.get_secret_value())

    threads = [threading.Thread(target=first_start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(secrets) == 8
    assert len(set(secrets)) == 1
    assert (tmp_path / "secret_key").read_text() == secrets[0]


def test_explicit_secret_is_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key=STRONG_SECRET).with_dev_secret()
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == STRONG_SECRET
    assert not (tmp_path / "secret_key").exists()


def test_development_generates_a_private_webhook_key_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    secret = generate_secret()
    stored = Settings(data_dir=data_dir).webhook_secret_box.seal(secret)
    path = data_dir / "webhook_secret_keys"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text()
    assert SecretBox([key]).open(stored) == secret
    # The next start (or the worker, on the same DATA_DIR) opens what this one sealed.
    assert Settings(data_dir=data_dir).webhook_secret_box.open(stored) == secret
    assert os.listdir(data_dir) == ["webhook_secret_keys"]


def test_explicit_webhook_keys_are_used_and_nothing_is_generated(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, webhook_secret_keys=WEBHOOK_KEY)
    stored = settings.webhook_secret_box.seal("whsec_x")
    assert SecretBox([WEBHOOK_KEY]).open(stored) == "whsec_x"
    assert not (tmp_path / "webhook_secret_keys").exists()
    # Production never falls back to a generated key, even past validation.
    unkeyed = production(data_dir=tmp_path).model_copy(update={"webhook_secret_keys": None})
    with pytest.raises(ValueError, match="WEBHOOK_SECRET_KEYS must be set in production"):
        _ = unkeyed.webhook_secret_box
    assert not (tmp_path / "webhook_secret_keys").exists()


def test_require_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match=r"^DATABASE_URL, SECRET_KEY not set"):
        Settings(redis_url="redis://cache").require()


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:s3cret@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("postgresql+asyncpg://u:p%40ss@db/x", "postgresql+asyncpg://u:***@db/x"),
        ("postgresql://u:p@ss@db/x", "postgresql://u:***@db/x"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql://u@db/x", "postgresql://u@db/x"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
    ],
)
def test_mask_url_hides_passwords(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(("given", "level"), [("debug", "DEBUG"), ("Warning", "WARNING")])
def test_log_level_is_normalised(given: str, level: str) -> None:
    assert Settings(log_level=given).log_level == level


def test_unknown_log_level_is_rejected() -> None:
    with pytest.raises(ValidationError, match="must be one of DEBUG, INFO"):
        Settings(log_level="verbose")


def test_unknown_environment_is_rejected() -> None:
    with pytest.raises(ValidationError):
        Settings(app_env="staging")  # type: ignore[arg-type]
    assert Settings(app_env="test").app_env is Environment.TEST  # type: ignore[arg-type]


def test_metrics_are_off_by_default_and_never_on_the_api_port() -> None:
    assert Settings().metrics_port == 0
    assert Settings().metrics_host == "127.0.0.1"
    assert Settings(metrics_port=9464).metrics_port == 9464
    with pytest.raises(ValidationError) as caught:
        Settings(port=8000, metrics_port=8000)
    assert "METRICS_PORT must differ from PORT" in describe_settings_error(caught.value)
