"""Realistic seed data for benchmarks and load tests, written fast with PostgreSQL COPY.

Users are `user1`..`userN` (`userN@example.com`), all with the same password, hashed once with
the configured argon2id policy (so logging in never triggers a rehash). Articles get slugs made
like the API makes them (`slugs.slugify`, then `-2`, `-3`... on a clash), tags through the
join table, and timestamps spread over `span_days`. Popularity is skewed, as on a real site: a
few authors write most articles, are followed most, and recent articles get most favorites.
Everything is written in one transaction: a failed run leaves the database as it was.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from redis.exceptions import RedisError

from service.caching import generations
from service.infra.redis import ClientOptions, close_client, open_client
from service.services import slugs
from service.services.security import PasswordPolicy, Passwords

DEFAULT_PASSWORD = "password123"  # noqa: S105 (documented test data)
EMAIL_DOMAIN = "example.com"
# Serialises concurrent seeders (arbitrary, fixed key).
_ADVISORY_LOCK = 0x5EED_C0DE
_COPY_CHUNK = 20_000
# Denormalised counters that a migration may add: (table, column, counted table, its key).
# Each one present in the schema is recomputed from the rows after seeding.
_COUNTERS = (
    ("articles", "favorites_count", "favorites", "article_id"),
    ("articles", "comments_count", "comments", "article_id"),
)
_TABLES = ("users", "follows", "tags", "articles", "article_tags", "favorites", "comments")

_WORD_TEXT = (
    "ability able about above accept account across action activity actually add address "
    "after again against agent agree ahead allow almost along already also always amount "
    "analysis answer anyone appear apply approach area argue around article assume attention "
    "available avoid away balance base basic beautiful become before begin behavior behind "
    "believe benefit best better between beyond big bill blue board body book both box "
    "bring build building business call camera capital card care carry case catch cause "
    "center central certain chance change charge check choice choose city claim clear "
    "close code cold collection color common community company compare complete concern "
    "condition consider contain continue control cost could country couple course cover "
    "create cultural current customer cut data day deal debate decade decide deep defense "
    "degree describe design detail develop difference different difficult direction "
    "discover discuss doctor draw dream drive early easy economic edge effect effort eight "
    "either element else end energy enjoy enough enter entire environment evening event "
    "every evidence exactly example expect experience expert explain face fact factor fall "
    "family fast feature feel field figure final find fine finish fire first five floor "
    "focus follow force forget form forward four free friend front full future game garden "
    "general generation glass goal good great green ground group grow growth guess happen "
    "hard head health hear heart heavy help high history hold home hope hour house however "
    "huge idea image imagine impact important improve include increase indeed information "
    "inside instead interest interview issue item itself join just keep kind kitchen know "
    "language large last late later laugh learn least leave left less letter level light "
    "likely line list listen little local long look lose loss lot machine magazine main "
    "maintain major manage market material matter maybe measure media medical meet memory "
    "mention message method middle might mind minute mission model modern moment money "
    "month morning most mother move movement much music must nature near nearly necessary "
    "need network never news next nice night none note nothing notice number object "
    "offer office often open operation option order organization other outside owner page "
    "paper part particular partner party pass past pattern pay peace people perform period "
    "person picture piece place plan plant play point policy popular position possible "
    "power practice prepare present pressure pretty prevent price private probably problem "
    "process produce product program project property protect prove provide public pull "
    "purpose push quality question quickly quite radio raise range rather reach read ready "
    "real reason receive recent record reduce reflect region relate remain remember report "
    "represent require research resource respond rest result return reveal rich right rise "
    "risk river road rock role room rule safe same save scene science score season second "
    "section security seek seem sense series serious serve service seven several shake "
    "share short show side sign similar simple simply since single sister site situation "
    "size skill small social society soldier some song soon sort sound source south space "
    "speak special specific speech spend sport spring staff stage stand standard star start "
    "state statement station stay step still stock stop store story strategy street strong "
    "structure student study stuff style subject success suddenly suggest summer support "
    "sure surface system table take talk task teach team technology tell term test thank "
    "theory thing think third those though thought thousand threat three through throw "
    "together tonight total tough toward town trade traditional training travel treat "
    "tree trial trip trouble true truth turn type under understand unit until upon usually "
    "value various very view visit voice wait walk wall watch water wear weight well west "
    "whatever wide wind window wish within without wonder word work worker world worry "
    "write writer wrong yard yeah year young yourself"
)
_WORDS = _WORD_TEXT.split()
_TAG_TEXT = (
    "python javascript typescript rust go java kotlin swift ruby elixir haskell scala "
    "postgres redis sql nosql docker kubernetes linux devops cloud aws security privacy "
    "testing performance caching api rest graphql http web frontend backend css html react "
    "vue svelte angular flask django node async concurrency databases algorithms design "
    "architecture microservices career remote productivity open-source tutorial beginners "
    "ai machine-learning data-science analytics mobile android ios gaming music books "
    "travel food photography writing startups management leadership news"
)
_TAG_WORDS = _TAG_TEXT.split()
_TAG_QUALIFIERS = ("tips", "101", "advanced", "patterns", "tools", "news", "internals")
MAX_TAGS = len(_TAG_WORDS) * (1 + len(_TAG_QUALIFIERS))


class SeedError(Exception):
    """The database cannot be seeded as asked (not empty, not migrated, bad options)."""


@dataclass(frozen=True)
class SeedOptions:
    """How much to write; the per-article and per-user figures are averages."""

    users: int = 100
    articles: int = 1_000
    comments_per_article: int = 2
    tags: int = 200
    tags_per_article: int = 3
    follows_per_user: int = 10
    favorites_per_user: int = 10
    password: str = DEFAULT_PASSWORD
    rng_seed: int = 1
    span_days: int = 730
    append: bool = False

    def check(self) -> None:
        """Raise `SeedError` for options that cannot be met."""
        for name in (
            "users",
            "articles",
            "comments_per_article",
            "tags",
            "tags_per_article",
            "follows_per_user",
            "favorites_per_user",
        ):
            if getattr(self, name) < 0:
                raise SeedError(f"{name.replace('_', '-')} must not be negative")
        if self.span_days < 1:
            raise SeedError("span-days must be at least 1")
        if self.articles and not self.users:
            raise SeedError("articles need authors: give at least one user")
        if self.tags > MAX_TAGS:
            raise SeedError(f"at most {MAX_TAGS} tags")
        if not 8 <= len(self.password) <= 256:
            raise SeedError("the password must have 8-256 characters (the API's rule)")


@dataclass(frozen=True)
class SeedReport:
    """What a run wrote: rows per table, the first and last usernames, the time taken."""

    counts: dict[str, int]
    first_user: int
    last_user: int
    password: str
    elapsed: float
    counters_refreshed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"seeded in {self.elapsed:.1f} s"]
        width = max(len(name) for name in self.counts)
        lines += [f"  {name:<{width}}  {count:>10,}" for name, count in self.counts.items()]
        if self.last_user >= self.first_user:
            lines.append(
                f"log in as user{self.first_user}@{EMAIL_DOMAIN} .. "
                f"user{self.last_user}@{EMAIL_DOMAIN}, password {self.password!r}"
            )
        if self.counters_refreshed:
            lines.append(f"recomputed: {', '.join(self.counters_refreshed)}")
        return "\n".join(lines)


def asyncpg_dsn(database_url: str) -> str:
    """`database_url` in the form asyncpg accepts (no SQLAlchemy driver suffix)."""
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def seed(
    *,
    database_url: str,
    options: SeedOptions,
    policy: PasswordPolicy | None = None,
    progress: Callable[[str], None] | None = None,
    redis_url: str | None = None,
) -> SeedReport:
    """Fill the database at `database_url`; refuse one that has users unless `append`.

    With `redis_url`, the cache generations are bumped afterwards: the rows went in behind the
    API's back, and servers must not keep answering from cached entries.
    """
    options.check()
    started = time.perf_counter()
    say = progress or (lambda _message: None)
    password_hash = await Passwords(policy or PasswordPolicy()).hash(options.password)
    try:
        conn: asyncpg.Connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise SeedError(f"cannot connect to the database: {exc}") from None
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = off")
            await conn.execute("SET LOCAL statement_timeout = 0")
            await conn.fetchval("SELECT pg_advisory_xact_lock($1)", _ADVISORY_LOCK)
            writer = _Writer(conn, options, password_hash, say)
            first_user = await writer.prepare()
            counts = await writer.write(first_user)
            refreshed = await _refresh_counters(conn)
        # VACUUM too, not only ANALYZE: fresh pages are not all-visible, so index-only scans
        # (the list counts) would read the heap until autovacuum comes by.
        say("  vacuuming and analyzing tables")
        await conn.execute(f"VACUUM (ANALYZE) {', '.join(_TABLES)}")
    except asyncpg.UndefinedTableError:
        raise SeedError("the database has no schema: run `conduit migrate` first") from None
    finally:
        await conn.close()
    if redis_url:
        await _invalidate_cache(redis_url)
    return SeedReport(
        counts=counts,
        first_user=first_user,
        last_user=first_user + options.users - 1,
        password=options.password,
        elapsed=time.perf_counter() - started,
        counters_refreshed=refreshed,
    )


def _tag_names(count: int) -> list[str]:
    """`count` distinct tag names, the most common first."""
    names = list(_TAG_WORDS)
    names += [f"{word}-{qualifier}" for qualifier in _TAG_QUALIFIERS for word in _TAG_WORDS]
    return names[:count]


def _zipf_cum_weights(n: int, exponent: float = 1.0) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank + 1) ** exponent for rank in range(n)))


class _Text:
    """Plausible English-like prose from a fixed vocabulary, fast (sentences are pooled)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sentences = [self.sentence() for _ in range(4_000)]

    def sentence(self, low: int = 6, high: int = 18) -> str:
        words = " ".join(self.rng.choices(_WORDS, k=self.rng.randint(low, high)))
        return words[0].upper() + words[1:] + self.rng.choice(".....?!")

    def title(self) -> str:
        return " ".join(w.capitalize() for w in self.rng.choices(_WORDS, k=self.rng.randint(3, 8)))

    def description(self) -> str:
        return " ".join(self.rng.choices(self.sentences, k=self.rng.randint(1, 2)))

    def body(self) -> str:
        rng = self.rng
        parts = []
        for index in range(rng.randint(2, 6)):
            if index and rng.random() < 0.3:
                parts.append("## " + self.title())
            parts.append(" ".join(rng.choices(self.sentences, k=rng.randint(2, 6))))
        return "\n\n".join(parts)

    def comment(self) -> str:
        return " ".join(self.rng.choices(self.sentences, k=self.rng.randint(1, 3)))


class _Writer:
    """Generates the rows of one run and copies them in, table by table."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        options: SeedOptions,
        password_hash: str,
        say: Callable[[str], None],
    ) -> None:
        self.conn = conn
        self.options = options
        self.password_hash = password_hash
        self.say = say
        self.rng = random.Random(options.rng_seed)  # noqa: S311 (reproducible data, not secrets)
        self.text = _Text(self.rng)
        self.now = datetime.now(UTC)
        self.start = self.now - timedelta(days=options.span_days)
        self.taken_slugs: set[str] = set()

    async def prepare(self) -> int:
        """Check the database may be seeded; return the number of the first new user."""
        has_users = await self.conn.fetchval("SELECT EXISTS (SELECT 1 FROM users)")
        if not has_users:
            return 1
        if not self.options.append:
            raise SeedError(
                "the database already has users: seed an empty (migrated) database, "
                "or pass --append to add to it"
            )
        # Numbers continue after any existing userN, so names and emails never clash.
        highest = await self.conn.fetchval(
            """
            SELECT max(substring(name FROM '^user([0-9]{1,9})$')::bigint) FROM (
                SELECT lower(username) AS name FROM users
                UNION ALL SELECT split_part(email, '@', 1) FROM users
            ) AS names
            """
        )
        if self.options.articles:
            self.taken_slugs = {
                row[0] for row in await self.conn.fetch("SELECT slug FROM articles")
            }
        return int(highest or 0) + 1

    async def write(self, first_user: int) -> dict[str, int]:
        """Write every table; return rows written per table."""
        counts: dict[str, int] = {}
        user_ids, user_created = await self._users(first_user)
        counts["users"] = len(user_ids)
        counts["follows"] = await self._follows(user_ids)
        tag_ids, counts["tags"] = await self._tags()
        article_ids, article_created = await self._articles(user_ids, user_created)
        counts["articles"] = len(article_ids)
        counts["article_tags"] = await self._article_tags(article_ids, tag_ids)
        counts["favorites"] = await self._favorites(user_ids, article_ids)
        counts["comments"] = await self._comments(user_ids, article_ids, article_created)
        return counts

    async def _reserve_ids(self, table: str, count: int) -> list[int]:
        # Taken from the identity sequence: unique even beside concurrent inserts.
        rows = await self.conn.fetch(
            "SELECT nextval(pg_get_serial_sequence($1, 'id')) FROM generate_series(1, $2)",
            table,
            count,
        )
        return sorted(row[0] for row in rows)

    async def _copy(
        self, table: str, columns: Sequence[str], rows: Iterator[tuple[object, ...]]
    ) -> int:
        started = time.perf_counter()
        total = 0
        while chunk := list(itertools.islice(rows, _COPY_CHUNK)):
            await self.conn.copy_records_to_table(table, records=chunk, columns=list(columns))
            total += len(chunk)
        self.say(f"  {table}: {total:,} rows in {time.perf_counter() - started:.1f} s")
        return total

    def _between(self, earliest: datetime) -> datetime:
        return earliest + (self.now - earliest) * self.rng.random()

    async def _users(self, first: int) -> tuple[list[int], list[datetime]]:
        count = self.options.users
        ids = await self._reserve_ids("users", count)
        # The oldest accounts have the smallest numbers; sign-ups fill the first 80% of the span.
        created = [
            self.start + (self.now - self.start) * (0.8 * index / max(count, 1))
            for index in range(count)
        ]
        rng = self.rng

        def rows() -> Iterator[tuple[object, ...]]:
            for index, user_id in enumerate(ids):
                number = first + index
                bio = self.text.sentence(4, 14) if rng.random() < 0.5 else None
                image = (
                    f"https://images.{EMAIL_DOMAIN}/avatars/{number}.jpg"
                    if rng.random() < 0.3
                    else None
                )
                yield (
                    user_id,
                    f"user{number}",
                    f"user{number}@{EMAIL_DOMAIN}",
                    self.password_hash,
                    bio,
                    image,
                    created[index],
                    created[index],
                )

        columns = ("id", "username", "email", "password_hash", "bio", "image")
        await self._copy("users", (*columns, "created_at", "updated_at"), rows())
        return ids, created

    def _popular(self, count: int, skew: float) -> int:
        """An index in [0, count), small ones far more likely (skew > 1)."""
        return int(count * self.rng.random() ** skew)

    def _distinct(
        self, count: int, want: int, pick: Callable[[], int], exclude: int = -1
    ) -> set[int]:
        available = count - (0 <= exclude < count)
        want = min(want, available)
        if want > available // 2:
            chosen = set(self.rng.sample(range(count), min(count, want + 1)))
            chosen.discard(exclude)
            return set(itertools.islice(sorted(chosen), want))
        chosen = set()
        while len(chosen) < want:
            value = pick()
            if value != exclude:
                chosen.add(value)
        return chosen

    def _how_many(self, average: int) -> int:
        return self.rng.randint(0, 2 * average) if average else 0

    async def _follows(self, user_ids: list[int]) -> int:
        count = len(user_ids)
        if count < 2:
            return 0

        def rows() -> Iterator[tuple[object, ...]]:
            for index, follower in enumerate(user_ids):
                want = self._how_many(self.options.follows_per_user)
                picked = self._distinct(
                    count, want, lambda: self._popular(count, 2.5), exclude=index
                )
                for followee in sorted(picked):
                    yield (follower, user_ids[followee])

        return await self._copy("follows", ("follower_id", "followee_id"), rows())

    async def _tags(self) -> tuple[list[int], int]:
        """Ids of the tags to use, most popular first, and how many were new."""
        names = _tag_names(self.options.tags)
        if not names:
            return [], 0
        status = await self.conn.execute(
            "INSERT INTO tags (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING",
            names,
        )
        rows = await self.conn.fetch("SELECT name, id FROM tags WHERE name = ANY($1)", names)
        by_name = {row["name"]: row["id"] for row in rows}
        inserted = int(status.rsplit(" ", 1)[-1])
        self.say(f"  tags: {inserted:,} new of {len(names):,}")
        # Most popular first: the Zipf weights go by position.
        return [by_name[name] for name in names], inserted

    def _slug(self, title: str) -> str:
        base = slugs.slugify(title)
        slug = base
        suffix = 1
        while slug in self.taken_slugs or slug in slugs.RESERVED:
            suffix += 1
            slug = f"{base}-{suffix}"
        self.taken_slugs.add(slug)
        return slug

    async def _articles(
        self, user_ids: list[int], user_created: list[datetime]
    ) -> tuple[list[int], list[datetime]]:
        count = self.options.articles
        if not count:
            return [], []
        users = len(user_ids)
        authored = []
        for _ in range(count):
            author = self._popular(users, 2.0)
            authored.append((self._between(user_created[author]), user_ids[author]))
        # Ids in creation order, as the API would have assigned them.
        authored.sort()
        ids = await self._reserve_ids("articles", count)
        rng = self.rng
        text = self.text

        def rows() -> Iterator[tuple[object, ...]]:
            for article_id, (created, author_id) in zip(ids, authored, strict=True):
                title = text.title()
                updated = self._between(created) if rng.random() < 0.2 else created
                yield (
                    article_id,
                    self._slug(title),
                    title,
                    text.description(),
                    text.body(),
                    author_id,
                    created,
                    updated,
                )

        columns = ("id", "slug", "title", "description", "body", "author_id")
        await self._copy("articles", (*columns, "created_at", "updated_at"), rows())
        return ids, [created for created, _ in authored]

    async def _article_tags(self, article_ids: list[int], tag_ids: list[int]) -> int:
        if not tag_ids or not self.options.tags_per_article:
            return 0
        weights = _zipf_cum_weights(len(tag_ids))
        average = self.options.tags_per_article

        def rows() -> Iterator[tuple[object, ...]]:
            for article_id in article_ids:
                picked = self.rng.choices(tag_ids, cum_weights=weights, k=self._how_many(average))
                for tag_id in sorted(set(picked)):
                    yield (article_id, tag_id)

        return await self._copy("article_tags", ("article_id", "tag_id"), rows())

    async def _favorites(self, user_ids: list[int], article_ids: list[int]) -> int:
        count = len(article_ids)
        if not count:
            return 0

        def pick() -> int:
            # Mostly recent articles (the front page), some from anywhere in the archive.
            if self.rng.random() < 0.6:
                return count - 1 - self._popular(count, 2.0)
            return self.rng.randrange(count)

        def rows() -> Iterator[tuple[object, ...]]:
            for user_id in user_ids:
                want = self._how_many(self.options.favorites_per_user)
                for index in sorted(self._distinct(count, want, pick)):
                    yield (user_id, article_ids[index])

        return await self._copy("favorites", ("user_id", "article_id"), rows())

    async def _comments(
        self, user_ids: list[int], article_ids: list[int], article_created: list[datetime]
    ) -> int:
        average = self.options.comments_per_article
        if not article_ids or not average:
            return 0
        rng = self.rng

        def rows() -> Iterator[tuple[object, ...]]:
            for article_id, created in zip(article_ids, article_created, strict=True):
                for _ in range(self._how_many(average)):
                    at = self._between(created)
                    yield (article_id, rng.choice(user_ids), self.text.comment(), at, at)

        columns = ("article_id", "author_id", "body", "created_at", "updated_at")
        return await self._copy("comments", columns, rows())


async def _refresh_counters(conn: asyncpg.Connection) -> list[str]:
    """Recompute each denormalised counter the schema has, so it matches the rows."""
    present = {
        (row["table_name"], row["column_name"])
        for row in await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema()"
        )
    }
    refreshed = []
    for table, column, counted, key in _COUNTERS:
        if (table, column) not in present:
            continue
        # Identifiers come from the constant table above, never from input.
        await conn.execute(
            f"UPDATE {table} AS t SET {column} = coalesce(c.n, 0) "  # noqa: S608
            f"FROM {table} AS o LEFT JOIN (SELECT {key}, count(*) AS n FROM {counted} "
            f"GROUP BY {key}) AS c ON c.{key} = o.id "
            f"WHERE o.id = t.id AND t.{column} IS DISTINCT FROM coalesce(c.n, 0)"
        )
        refreshed.append(f"{table}.{column}")
    return refreshed


# The seed bumps the generations once, after its commit; a Redis that does not answer in this
# long is reported rather than waited for.
SEED_REDIS_TIMEOUT = 10.0


async def _invalidate_cache(redis_url: str) -> None:
    client = open_client(redis_url, ClientOptions.single(SEED_REDIS_TIMEOUT))
    try:
        await generations.bump(client=client, kinds=generations.KINDS)
    except (RedisError, OSError) as exc:
        raise SeedError(
            f"seeded, but the cache could not be invalidated ({type(exc).__name__}): "
            "flush the Redis database of the servers"
        ) from None
    finally:
        await close_client(client)
