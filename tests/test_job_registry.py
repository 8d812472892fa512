"""The service's job handlers, run by the service's worker against the real database."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.infra.mail import Mailer, MailError
from service.infra.settings import Settings
from service.job_registry import create_worker
from service.models import PasswordResetToken
from service.services import password_reset
from tests.factories import TestUser
from tests.jobs.support import TOKEN_IN_LINK

MakeUser = Callable[..., Awaitable[TestUser]]


class CheckingMailer(Mailer):
    """Writes .eml files, but first looks from another connection whether the token in the
    message is already usable, as a reader of the mail could the moment it arrives."""

    def __init__(self, settings: Settings, database_url: str, *, fail: bool = False) -> None:
        super().__init__(settings)
        self.database_url = database_url
        self.fail = fail
        self.usable_on_arrival: list[bool] = []

    async def send(self, to: str, subject: str, text: str) -> None:
        found = TOKEN_IN_LINK.search(text)
        assert found is not None, text
        conn = await asyncpg.connect(self.database_url)
        try:
            usable = await conn.fetchval(
                "SELECT count(*) FROM password_reset_tokens WHERE token_hash = $1"
                " AND used_at IS NULL AND expires_at > now()",
                password_reset.hash_token(found.group(1)),
            )
        finally:
            await conn.close()
        self.usable_on_arrival.append(usable == 1)
        if self.fail:
            raise MailError("the relay is away")
        await super().send(to, subject, text)


@pytest.fixture
def mail_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"smtp_url": None, "data_dir": tmp_path})


async def request_reset(sessionmaker: async_sessionmaker[AsyncSession], email: str) -> None:
    async with sessionmaker.begin() as session:
        await password_reset.request_reset(session=session, email=email)


async def run_jobs(settings: Settings, mailer: Mailer, **changes: float) -> int:
    """Run what is due with the service's worker mailing through `mailer`; how many ran."""
    worker = create_worker(settings, mailer=mailer, **changes)
    try:
        return await worker.run_pending()
    finally:
        await worker.close()


async def tokens(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(PasswordResetToken)) or 0


async def test_a_reset_mail_carries_a_token_that_is_usable_when_it_arrives(
    mail_settings: Settings,
    database_url: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    make_user: MakeUser,
    tmp_path: Path,
) -> None:
    """A reader may follow the link before the worker's next statement: the token must have
    committed before the mail leaves (a 403 on confirm otherwise)."""
    user = await make_user()
    mailer = CheckingMailer(mail_settings, database_url)
    await request_reset(sessionmaker, user.email)
    assert await run_jobs(mail_settings, mailer, backoff_base=0.0) == 1
    assert mailer.usable_on_arrival == [True]
    assert len(list((tmp_path / "mail").glob("*.eml"))) == 1


async def test_a_reset_mail_that_could_not_be_sent_leaves_no_token_and_is_retried(
    mail_settings: Settings,
    database_url: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    make_user: MakeUser,
    tmp_path: Path,
) -> None:
    user = await make_user()
    failing = CheckingMailer(mail_settings, database_url, fail=True)
    await request_reset(sessionmaker, user.email)
    assert await run_jobs(mail_settings, failing, backoff_base=3600.0) == 1
    assert failing.usable_on_arrival == [True]
    # The unsent link is withdrawn: it does not count as "mailed a minute ago" for the retry.
    assert await tokens(sessionmaker) == 0
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE jobs SET run_at = now() WHERE status = 'pending'")
    finally:
        await conn.close()
    working = CheckingMailer(mail_settings, database_url)
    assert await run_jobs(mail_settings, working, backoff_base=0.0) == 1
    assert working.usable_on_arrival == [True]
    assert await tokens(sessionmaker) == 1
    assert len(list((tmp_path / "mail").glob("*.eml"))) == 1
