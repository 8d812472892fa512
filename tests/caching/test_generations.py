"""What a transaction changed, noted for the cache, and the generation bumps that invalidate it
(service/caching/generations.py), against the real Redis."""

from __future__ import annotations

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from service.caching import generations as invalidation


def test_notes_accumulate_until_taken_and_are_then_forgotten() -> None:
    session = AsyncSession()
    assert invalidation.take_changed(session) == set()
    invalidation.note_changed(session, invalidation.ARTICLES)
    invalidation.note_changed(session, invalidation.TAGS, invalidation.ARTICLES)
    assert invalidation.take_changed(session) == {invalidation.ARTICLES, invalidation.TAGS}
    assert invalidation.take_changed(session) == set()


def test_sessions_do_not_share_notes() -> None:
    first, second = AsyncSession(), AsyncSession()
    invalidation.note_changed(first, invalidation.COMMENTS)
    assert invalidation.take_changed(second) == set()
    assert invalidation.take_changed(first) == {invalidation.COMMENTS}


def test_every_kind_has_its_own_counter_key() -> None:
    keys = {invalidation.generation_key(kind) for kind in invalidation.KINDS}
    assert len(keys) == len(invalidation.KINDS) == 4
    assert all(key.startswith("c:g:") for key in keys)
    assert all(":" not in kind for kind in invalidation.KINDS)  # kinds are key segments


async def test_bump_increments_each_named_kind_once(rds: Redis) -> None:
    await rds.set(invalidation.generation_key(invalidation.ARTICLES), 10)
    await rds.set(invalidation.generation_key(invalidation.TAGS), 5)
    await invalidation.bump(client=rds, kinds=[invalidation.ARTICLES])
    await invalidation.bump(
        client=rds, kinds=[invalidation.ARTICLES, invalidation.TAGS, invalidation.ARTICLES]
    )
    values = await rds.mget([invalidation.generation_key(kind) for kind in invalidation.KINDS])
    assert values == [b"12", b"6", None, None]
    assert await rds.ttl(invalidation.generation_key(invalidation.ARTICLES)) == -1


async def test_a_missing_counter_starts_from_the_clock_not_from_zero(rds: Redis) -> None:
    """A counter lost with Redis's data must not meet the generations of its earlier life."""
    before = int((await rds.time())[0]) * 1_000_000
    await invalidation.bump(client=rds, kinds=[invalidation.COMMENTS])
    value = int(await rds.get(invalidation.generation_key(invalidation.COMMENTS)) or 0)
    assert before <= value <= before + 10_000_000 + 1
