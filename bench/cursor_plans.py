"""Article list pages by offset and by cursor at several depths: timings and query plans.

Runs the service's own `list_articles` (anonymous, as a cache miss runs it) on a seeded
database, times each page (median of `--runs`), and prints `EXPLAIN (ANALYZE, BUFFERS)` of the
page statement for each depth. A cursor page at depth d starts after the row at offset d - 1.

    conduit seed --users 10000 --articles 100000      # DATABASE_URL: a scratch database
    python -m bench.cursor_plans postgresql://postgres@127.0.0.1/scratch --sort -createdAt

Results: docs/performance.md ("Cursor pages").
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from service.domain.articles import ArticleSort, ArticleView
from service.domain.pages import Page, Position
from service.infra.settings import normalise_database_url
from service.services import articles


async def _page(
    session: AsyncSession, args: argparse.Namespace, **window: Any
) -> Page[ArticleView]:
    sort: ArticleSort | None = args.sort
    return await articles.list_articles(
        session=session,
        viewer=None,
        limit=window.pop("limit", 20),
        offset=window.pop("offset", 0),
        position=window.pop("position", None),
        sort=sort,
        q=args.q,
        tag=args.tag,
    )


async def main(args: argparse.Namespace) -> None:
    engine = create_async_engine(normalise_database_url(args.url), pool_size=1)
    statements: list[tuple[str, Any]] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _capture(_c: Any, _k: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    maker = async_sessionmaker(engine, expire_on_commit=False)
    rows = []
    executed: dict[tuple[int, str], str] = {}
    async with maker() as session:
        for depth in args.depths:
            position = None
            if depth:
                before = await _page(session, args, limit=1, offset=depth - 1)
                assert before.edges.last is not None, f"fewer than {depth} articles"
                position = Position(before.edges.last)
            timings: dict[str, list[float]] = {"offset": [], "cursor": []}
            plans: dict[str, tuple[str, Any]] = {}
            for _ in range(args.runs):
                for mode, window in (
                    ("offset", {"offset": depth}),
                    ("cursor", {"position": position}),
                ):
                    statements.clear()
                    started = time.perf_counter()
                    page = await _page(session, args, **window)
                    timings[mode].append((time.perf_counter() - started) * 1000)
                    # count, page, (follows): the page statement is the second.
                    plans[mode] = statements[1]
                    session.expunge_all()
            rows.append((depth, len(page.items), timings))
            for mode in ("offset", "cursor"):
                statement, parameters = plans[mode]
                connection = await session.connection()
                raw = (await connection.get_raw_connection()).driver_connection
                assert raw is not None
                plan = await raw.fetch(
                    "EXPLAIN (ANALYZE, BUFFERS) " + statement, *(parameters or ())
                )
                lines = [row[0] for row in plan]
                print(f"\n--- depth {depth}, by {mode}")
                print("\n".join(lines))
                executed[(depth, mode)] = lines[-1].removeprefix("Execution Time: ")
    print(
        "\n| depth | offset: call | offset: page statement "
        "| cursor: call | cursor: page statement |"
    )
    print("|---|---|---|---|---|")
    for depth, count, timings in rows:
        cells = [
            f"{statistics.median(timings[mode]):.1f} ms | {executed[(depth, mode)]}"
            for mode in ("offset", "cursor")
        ]
        print(f"| {depth:,} ({count} rows) | " + " | ".join(cells) + " |")
    await engine.dispose()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="a seeded database")
    parser.add_argument(
        "--depths", type=lambda text: [int(n) for n in text.split(",")], default=[0, 5000, 50000]
    )
    parser.add_argument("--sort", default=None)
    parser.add_argument("--q", default=None)
    parser.add_argument("--tag", default=None)
    parser.add_argument("--runs", type=int, default=5)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
