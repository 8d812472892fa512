"""What a transaction changed, noted for the cache, and the generation bumps that invalidate it
(service/caching/generations.py), against the real Redis."""

from __future__ import annotations

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from service.caching import generations


def test_notes_accumulate_until_taken_and_are_then_forgotten() -> None:
    session = AsyncSession()
    assert generations.take_changed(session) == set()
    generations.note_changed(session, generations.ARTICLES)
    generations.note_changed(session, generations.TAGS, generations.ARTICLES)
    assert generations.take_changed(session) == {generations.ARTICLES, generations.TAGS}
    assert generations.take_changed(session) == set()


def test_sessions_do_not_share_notes() -> None:
    first, second = AsyncSession(), AsyncSession()
    generations.note_changed(first, generations.COMMENTS)
    assert generations.take_changed(second) == set()
    assert generations.take_changed(first) == {generations.COMMENTS}


def test_every_kind_has_its_own_counter_key() -> None:
    keys = {generations.generation_key(kind) for kind in generations.KINDS}
    assert len(keys) == len(generations.KINDS) == 4
    assert all(key.startswith("c:g:") for key in keys)
    assert all(":" not in kind for kind in generations.KINDS)  # kinds are key segments


async def test_bump_increments_each_named_kind_once(rds: Redis) -> None:
    await rds.set(generations.generation_key(generations.ARTICLES), 10)
    await rds.set(generations.generation_key(generations.TAGS), 5)
    await generations.bump(client=rds, kinds=[generations.ARTICLES])
    await generations.bump(
        client=rds, kinds=[generations.ARTICLES, generations.TAGS, generations.ARTICLES]
    )
    values = await rds.mget([generations.generation_key(kind) for kind in generations.KINDS])
    assert values == [b"12", b"6", None, None]
    assert await rds.ttl(generations.generation_key(generations.ARTICLES)) == -1


async def test_a_missing_counter_starts_from_the_clock_not_from_zero(rds: Redis) -> None:
    """A counter lost with Redis's data must not meet the generations of its earlier life."""
    before = int((await rds.time())[0]) * 1_000_000
    await generations.bump(client=rds, kinds=[generations.COMMENTS])
    value = int(await rds.get(generations.generation_key(generations.COMMENTS)) or 0)
    assert before <= value <= before + 10_000_000 + 1
