"""Time and ratio of gzip and brotli levels on a 100 KB JSON body, and the ETag hash.

Builds a deterministic article-list-like JSON body (the shape of `GET /api/v1/articles`),
compresses it with each level a number of times and prints the median time per body, the
compressed size and the ratio; then the cost of hashing it for the ETag, and of handing one
compression to a thread (`asyncio.to_thread`) instead of running it on a busy event loop, with
the levels `service.http.conditional` uses: wall time per body each way, and the longest
time the loop could not run another task.

    python -m bench.compression_bench [--size 102400] [--repeat 50]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import time
import zlib
from collections.abc import Callable
from typing import Any

import orjson

from service.http.conditional import BROTLI_QUALITY, GZIP_LEVEL, OFFLOAD_MIN_BYTES, brotli

VOCABULARY = (
    "dragon train believe angular react flask python async await database index query cache "
    "redis postgres conduit article comment favorite follow profile tag feed user author slug "
    "the of and to in is it that for on with as was by at this be are from or have an"
)
WORDS = VOCABULARY.split()


def article(rng: random.Random, n: int) -> dict[str, Any]:
    """One article summary as the API lists it."""

    def words(count: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(count))

    title = words(rng.randint(3, 9)).capitalize()
    return {
        "slug": "-".join(title.lower().split()) + f"-{n}",
        "title": title,
        "description": words(rng.randint(8, 30)),
        "tagList": sorted({rng.choice(WORDS) for _ in range(rng.randint(0, 5))}),
        "createdAt": f"2025-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T10:2{n % 10}:33.{n:03d}Z",
        "updatedAt": f"2025-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T11:2{n % 10}:33.{n:03d}Z",
        "favorited": rng.random() < 0.3,
        "favoritesCount": rng.randint(0, 500),
        "author": {
            "username": f"user{rng.randint(1, 10_000)}",
            "bio": words(rng.randint(0, 20)) or None,
            "image": f"https://img.example.com/{rng.randint(1, 10_000)}.jpg",
            "following": rng.random() < 0.2,
        },
    }


def json_body(size: int) -> tuple[bytes, int]:
    """A list body of about `size` bytes and the number of articles in it."""
    rng = random.Random(6)
    articles: list[dict[str, Any]] = []
    while len(orjson.dumps({"articles": articles, "articlesCount": 1000})) < size:
        articles.append(article(rng, len(articles)))
    return orjson.dumps({"articles": articles, "articlesCount": 1000}), len(articles)


def median_ms(func: Callable[[], object], repeat: int) -> float:
    """Median wall time of `func()` in milliseconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def run_beside_loop(
    compress: Callable[[], bytes], repeat: int, *, offload: bool
) -> tuple[float, float]:
    """(wall ms per body, longest ms the event loop could not run another task) while a task
    keeps the loop busy (as a server under load does) and `compress` runs `repeat` times, on
    the loop or through `asyncio.to_thread`."""
    stop = False
    longest = 0.0

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = time.perf_counter()
    for _ in range(repeat):
        if offload:
            await asyncio.to_thread(compress)
        else:
            compress()
            await asyncio.sleep(0)
    wall = (time.perf_counter() - started) / repeat
    stop = True
    await task
    return wall * 1000, longest * 1000


async def offload_figures(body: bytes, repeat: int) -> list[tuple[str, float, float, float, float]]:
    """Per coding: wall ms and longest loop stall, on the loop and via to_thread."""
    rows = []
    for name, compress in codings(body):
        wall_loop, stall_loop = await run_beside_loop(compress, repeat, offload=False)
        wall_thread, stall_thread = await run_beside_loop(compress, repeat, offload=True)
        rows.append((name, wall_loop, wall_thread, stall_loop, stall_thread))
    return rows


def codings(body: bytes) -> list[tuple[str, Callable[[], bytes]]]:
    """The levels the middleware uses (service.http.conditional)."""
    chosen: list[tuple[str, Callable[[], bytes]]] = [
        (f"gzip-{GZIP_LEVEL}", lambda: zlib.compress(body, GZIP_LEVEL, wbits=31))
    ]
    if brotli is not None:
        chosen.append(
            (f"br-{BROTLI_QUALITY}", lambda: brotli.compress(body, quality=BROTLI_QUALITY))
        )
    return chosen


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100 * 1024, help="body size in bytes")
    parser.add_argument("--repeat", type=int, default=50, help="runs per cell (median)")
    args = parser.parse_args()

    body, count = json_body(args.size)
    print(f"body: {len(body)} bytes of JSON ({count} article summaries)")
    print(f"{'coding':<10}{'level':>6}{'ms/body':>10}{'bytes':>9}{'ratio':>8}{'MB/s':>8}")
    cells: list[tuple[str, int, Callable[[], bytes]]] = [
        ("gzip", level, lambda level=level: zlib.compress(body, level, wbits=31))
        for level in (1, 3, 4, 5, 6, 9)
    ]
    if brotli is not None:
        cells += [
            ("br", quality, lambda q=quality: brotli.compress(body, quality=q))
            for quality in (1, 3, 4, 5, 6, 11)
        ]
    else:
        print("(brotli not installed: gzip only)")
    for coding, level, compress in cells:
        repeat = max(3, args.repeat // 10) if level >= 9 else args.repeat
        ms = median_ms(compress, repeat)
        size = len(compress())
        mb_s = len(body) / 1e6 / (ms / 1000)
        print(f"{coding:<10}{level:>6}{ms:>10.3f}{size:>9}{len(body) / size:>8.2f}{mb_s:>8.0f}")

    print()
    for name, digest in (
        ("blake2b-16", lambda: hashlib.blake2b(body, digest_size=16).digest()),
        ("sha256", lambda: hashlib.sha256(body).digest()),
    ):
        print(f"etag hash {name:<11}{median_ms(digest, args.repeat):>8.3f} ms/body")

    print()
    print("on a busy event loop (ms): wall time per body and longest loop stall, each way")
    print(
        f"{'body':>9} {'coding':<8}{'wall loop':>11}{'wall thread':>13}"
        f"{'stall loop':>12}{'stall thread':>14}"
    )
    for size in (100 * 1024, OFFLOAD_MIN_BYTES, 1024 * 1024):
        sized, _ = json_body(size)
        repeat = max(5, args.repeat * 100 * 1024 // size)
        for name, wall_loop, wall_thread, stall_loop, stall_thread in asyncio.run(
            offload_figures(sized, repeat)
        ):
            print(
                f"{len(sized):>9} {name:<8}{wall_loop:>11.2f}{wall_thread:>13.2f}"
                f"{stall_loop:>12.2f}{stall_thread:>14.2f}"
            )


if __name__ == "__main__":
    main()
