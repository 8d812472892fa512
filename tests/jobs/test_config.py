"""WorkerConfig: what it takes from the settings, and that it stays frozen and valid."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.infra.settings import Settings
from service.jobs import Periodic, WorkerConfig


async def _nothing(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    return None


def test_from_settings_takes_the_slots_and_grace_of_the_settings() -> None:
    settings = Settings(worker_concurrency=7, shutdown_grace_seconds=2.5)
    tick = Periodic(interval=1.0, task=_nothing)
    config = WorkerConfig.from_settings(
        settings, kind_concurrency={"test.hook": 3}, periodic={"tick": tick}
    )
    assert config.concurrency == 7
    assert config.shutdown_grace == 2.5
    assert config.kind_concurrency == {"test.hook": 3}
    assert config.periodic == {"tick": tick}
    bare = WorkerConfig.from_settings(settings)
    assert bare.kind_concurrency == {}
    assert bare.periodic == {}


def test_the_config_and_its_mappings_are_read_only() -> None:
    lanes = {"test.hook": 3}
    config = WorkerConfig.from_settings(Settings(), kind_concurrency=lanes)
    lanes["test.hook"] = 99  # the caller's dict is copied
    assert config.kind_concurrency == {"test.hook": 3}
    with pytest.raises(FrozenInstanceError):
        config.poll_interval = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.kind_concurrency["test.hook"] = 1  # type: ignore[index]


def test_invalid_slots_and_intervals_are_refused() -> None:
    config = WorkerConfig.from_settings(Settings())
    with pytest.raises(ValueError, match="kind_concurrency"):
        replace(config, kind_concurrency={"test.hook": 0})
    with pytest.raises(ValueError, match="periodic intervals"):
        replace(config, periodic={"never": Periodic(interval=0, task=_nothing)})
