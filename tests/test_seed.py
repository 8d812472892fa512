"""`conduit seed`: bulk seed data that the API serves as if it had been written through it."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import pytest_asyncio

from service import cli
from service.infra.migrate import upgrade_async
from service.infra.settings import Settings
from service.seed import DEFAULT_PASSWORD, SeedError, SeedOptions, seed
from service.services import slugs
from tests.cli import cli_environment, run

SMALL = SeedOptions(
    users=25,
    articles=80,
    comments_per_article=2,
    tags=30,
    follows_per_user=4,
    favorites_per_user=6,
)
TABLES = ("users", "follows", "tags", "articles", "article_tags", "favorites", "comments")


async def fetch(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def row_counts(database_url: str) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        [row] = await fetch(database_url, f"SELECT count(*) FROM {table}")  # noqa: S608
        counts[table] = row[0]
    return counts


@pytest_asyncio.fixture
async def scratch_database(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    """An empty database (no schema) of its own, dropped afterwards."""
    admin_url = server_urls[0].replace("postgresql+asyncpg://", "postgresql://")
    name = f"conduit_seed_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_counts_match_the_rows(database_url: str) -> None:
    report = await seed(database_url=database_url, options=SMALL)
    assert await row_counts(database_url) == report.counts
    assert report.counts["users"] == 25
    assert report.counts["articles"] == 80
    assert report.counts["tags"] == 30
    # Averages, not exact figures: something of each was written.
    for table in ("follows", "article_tags", "favorites", "comments"):
        assert report.counts[table] > 0, table
    assert (report.first_user, report.last_user) == (1, 25)
    summary = report.summary()
    assert "articles" in summary
    assert "user1@example.com .. user25@example.com" in summary


async def test_users_are_numbered_and_share_one_current_hash(database_url: str) -> None:
    await seed(database_url=database_url, options=SMALL)
    rows = await fetch(database_url, "SELECT username, email, password_hash FROM users")
    assert sorted(row["username"] for row in rows) == sorted(f"user{n}" for n in range(1, 26))
    assert all(row["email"] == f"{row['username']}@example.com" for row in rows)
    hashes = {row["password_hash"] for row in rows}
    assert len(hashes) == 1
    # The app's policy (OWASP minimum): logins never need a rehash.
    assert hashes.pop().startswith("$argon2id$v=19$m=19456,t=2,p=1$")


async def test_seeded_users_log_in_through_the_api(
    database_url: str, client: httpx.AsyncClient
) -> None:
    await seed(database_url=database_url, options=SMALL)
    [before] = await fetch(database_url, "SELECT password_hash FROM users WHERE id = 1")
    for email in ("user1@example.com", "user25@example.com"):
        response = await client.post(
            "/api/v1/users/login",
            json={"user": {"email": email, "password": DEFAULT_PASSWORD}},
        )
        assert response.status_code == 200, response.text
        token = response.json()["user"]["token"]
        me = await client.get("/api/v1/user", headers={"Authorization": f"Token {token}"})
        assert me.status_code == 200
        assert me.json()["user"]["email"] == email
    [after] = await fetch(database_url, "SELECT password_hash FROM users WHERE id = 1")
    assert after == before
    wrong = await client.post(
        "/api/v1/users/login",
        json={"user": {"email": "user1@example.com", "password": "not-the-password"}},
    )
    assert wrong.status_code == 401


async def test_favorites_counts_agree_with_the_favorites_rows(
    database_url: str, client: httpx.AsyncClient
) -> None:
    await seed(database_url=database_url, options=SMALL)
    expected = {
        row["slug"]: row["n"]
        for row in await fetch(
            database_url,
            "SELECT a.slug, count(f.user_id) AS n FROM articles a "
            "LEFT JOIN favorites f ON f.article_id = a.id GROUP BY a.slug",
        )
    }
    seen: dict[str, int] = {}
    for offset in (0, 50):
        page = await client.get("/api/v1/articles", params={"limit": 50, "offset": offset})
        assert page.status_code == 200
        body = page.json()
        assert body["articlesCount"] == 80
        seen |= {a["slug"]: a["favoritesCount"] for a in body["articles"]}
    assert seen == expected
    assert sum(expected.values()) > 0


async def test_articles_read_back_like_api_written_ones(
    database_url: str, client: httpx.AsyncClient
) -> None:
    await seed(database_url=database_url, options=SMALL)
    rows = await fetch(database_url, "SELECT slug, title, created_at FROM articles ORDER BY id")
    found = [row["slug"] for row in rows]
    assert len(set(found)) == len(found)
    for row in rows:
        base = slugs.slugify(row["title"])
        assert re.fullmatch(re.escape(base) + r"(-\d+)?", row["slug"]), row
        assert row["slug"] not in slugs.RESERVED
    # Ids follow creation time, and the times spread over the span.
    times = [row["created_at"] for row in rows]
    assert times == sorted(times)
    assert (times[-1] - times[0]).days > 30
    listed = (await client.get("/api/v1/articles", params={"limit": 1})).json()["articles"][0]
    assert listed["slug"] == found[-1]
    article = await client.get(f"/api/v1/articles/{listed['slug']}")
    assert article.status_code == 200
    assert len(article.json()["article"]["body"]) > 200
    tags = (await client.get("/api/v1/tags")).json()["tags"]
    assert tags
    by_tag = await client.get("/api/v1/articles", params={"tag": tags[0]})
    assert by_tag.json()["articlesCount"] > 0
    comments = await client.get(f"/api/v1/articles/{found[0]}/comments")
    assert comments.status_code == 200


async def test_the_feed_of_a_seeded_member_is_not_empty(
    database_url: str, client: httpx.AsyncClient
) -> None:
    await seed(database_url=database_url, options=SMALL)
    [row] = await fetch(
        database_url,
        "SELECT u.email FROM users u JOIN follows f ON f.follower_id = u.id "
        "JOIN articles a ON a.author_id = f.followee_id LIMIT 1",
    )
    login = await client.post(
        "/api/v1/users/login",
        json={"user": {"email": row["email"], "password": DEFAULT_PASSWORD}},
    )
    token = login.json()["user"]["token"]
    feed = await client.get("/api/v1/articles/feed", headers={"Authorization": f"Token {token}"})
    assert feed.status_code == 200
    assert feed.json()["articlesCount"] > 0


async def test_same_seed_same_data(database_url: str) -> None:
    options = SeedOptions(users=5, articles=20, comments_per_article=1, tags=10, rng_seed=7)
    await seed(database_url=database_url, options=options)
    first = await fetch(database_url, "SELECT slug, body FROM articles ORDER BY id")
    conn = await asyncpg.connect(database_url)
    await conn.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
    await conn.close()
    await seed(database_url=database_url, options=options)
    again = await fetch(database_url, "SELECT slug, body FROM articles ORDER BY id")
    assert [tuple(r) for r in again] == [tuple(r) for r in first]


async def test_refuses_a_database_with_users(database_url: str) -> None:
    await seed(database_url=database_url, options=SMALL)
    before = await row_counts(database_url)
    with pytest.raises(SeedError, match="already has users"):
        await seed(database_url=database_url, options=SMALL)
    assert await row_counts(database_url) == before


async def test_append_continues_the_numbering(database_url: str) -> None:
    await seed(database_url=database_url, options=SMALL)
    options = SeedOptions(users=5, articles=30, tags=30, rng_seed=SMALL.rng_seed, append=True)
    report = await seed(database_url=database_url, options=options)
    assert (report.first_user, report.last_user) == (26, 30)
    counts = await row_counts(database_url)
    assert counts["users"] == 30
    assert counts["articles"] == 110
    # Same tag vocabulary: the names are reused, not duplicated.
    assert counts["tags"] == 30
    assert report.counts["tags"] == 0
    more = await seed(
        database_url=database_url, options=SeedOptions(users=1, articles=1, tags=35, append=True)
    )
    assert more.counts["tags"] == 5
    [row] = await fetch(database_url, "SELECT count(DISTINCT slug) FROM articles")
    assert row[0] == 111


async def test_a_taken_slug_gets_a_numbered_suffix(database_url: str) -> None:
    options = SeedOptions(users=1, articles=3, tags=5, rng_seed=5)
    await seed(database_url=database_url, options=options)
    # The same seed again: the same titles, so the same base slugs.
    await seed(database_url=database_url, options=SeedOptions(**{**vars(options), "append": True}))
    rows = await fetch(database_url, "SELECT slug, title FROM articles ORDER BY id")
    first, second = rows[:3], rows[3:]
    assert [r["title"] for r in first] == [r["title"] for r in second]
    assert [r["slug"] + "-2" for r in first] == [r["slug"] for r in second]


async def test_unmigrated_database_is_a_clear_error(scratch_database: str) -> None:
    with pytest.raises(SeedError, match="run `conduit migrate` first"):
        await seed(database_url=scratch_database, options=SMALL)


async def test_denormalised_counters_are_recomputed(scratch_database: str) -> None:
    # Migration 0007 keeps the favorites count on the article row (by triggers on favorites):
    # seeding fills it itself, so it is right even without them.
    await upgrade_async(scratch_database)
    conn = await asyncpg.connect(scratch_database)
    await conn.execute("ALTER TABLE favorites DISABLE TRIGGER USER")
    await conn.close()
    report = await seed(database_url=scratch_database, options=SMALL)
    assert report.counters_refreshed == ["articles.favorites_count"]
    wrong = await fetch(
        scratch_database,
        "SELECT a.id FROM articles a WHERE a.favorites_count <> "
        "(SELECT count(*) FROM favorites f WHERE f.article_id = a.id)",
    )
    assert wrong == []
    assert "recomputed: articles.favorites_count" in report.summary()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (SeedOptions(users=0, articles=1), "articles need authors"),
        (SeedOptions(users=-1), "users must not be negative"),
        (SeedOptions(tags=100_000), "at most"),
        (SeedOptions(password="short"), "8-256 characters"),
        (SeedOptions(span_days=0), "span-days"),
    ],
)
async def test_impossible_options(database_url: str, options: SeedOptions, message: str) -> None:
    with pytest.raises(SeedError, match=message):
        await seed(database_url=database_url, options=options)
    assert (await row_counts(database_url))["users"] == 0


# The command line


@pytest.fixture
def _cli_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Settings
) -> Iterator[None]:
    yield from cli_environment(monkeypatch, tmp_path, settings)


@pytest.mark.usefixtures("_cli_environment")
async def test_cli_seeds_and_prints_a_summary(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run(
        "seed",
        "--users", "12",
        "--articles", "40",
        "--comments-per-article", "1",
        "--tags", "15",
        "--follows-per-user", "3",
        "--favorites-per-user", "2",
        "--password", "load-test-pw",
        "--seed", "3",
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    counts = await row_counts(database_url)
    assert (counts["users"], counts["articles"], counts["tags"]) == (12, 40, 15)
    assert re.search(r"^seeded in \d+\.\d s$", out, re.MULTILINE)
    assert re.search(r"^  articles\s+40$", out, re.MULTILINE)
    assert "password 'load-test-pw'" in out
    assert "articles: 40 rows" in err
    assert "postgresql" in err


@pytest.mark.usefixtures("_cli_environment")
async def test_cli_refuses_a_database_with_users(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run("seed", "--users", "3", "--articles", "3", "--quiet") == 0
    assert capsys.readouterr().err == ""
    assert await run("seed", "--users", "3", "--articles", "3", "--quiet") == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "conduit: the database already has users: seed an empty (migrated) database, "
        "or pass --append to add to it"
    )
    assert await run("seed", "--users", "3", "--articles", "3", "--quiet", "--append") == 0
    assert (await row_counts(database_url))["users"] == 6


def test_cli_default_password_is_the_seeds() -> None:
    assert cli.SEED_PASSWORD == DEFAULT_PASSWORD


@pytest.mark.usefixtures("_cli_environment")
def test_cli_rejects_negative_counts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["seed", "--users", "-5"])
    assert exc.value.code == 2
    assert "must not be negative" in capsys.readouterr().err
