"""Conditional writes: strong ETags on articles, comments and the current user; If-Match on
their writes (412 when stale, atomic with the write); 428 when the setting requires it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

import httpx
import pytest

from service.app import create_asgi
from service.infra.settings import Settings
from tests.apps import serving
from tests.factories import TestUser, make_article, make_comment, make_user

MakeUser = Callable[..., Awaitable[TestUser]]
STRONG = re.compile(r'"[0-9a-f]{20}\.[0-9a-f]{16}"')
STALE = {
    "errors": {"If-Match": ["the resource has changed since this version was read: read it again"]}
}


def article_path(slug: str) -> str:
    return f"/api/v1/articles/{slug}"


def edit(title: str) -> dict[str, dict[str, str]]:
    return {"article": {"title": title}}


async def test_single_article_reads_and_writes_carry_a_strong_etag(
    client: httpx.AsyncClient, owner: TestUser
) -> None:
    created = await client.post(
        "/api/v1/articles",
        json={"article": {"title": "Tagged", "description": "d", "body": "b"}},
        headers=owner.headers,
    )
    assert STRONG.fullmatch(created.headers["etag"])
    read = await client.get(article_path("tagged"), headers=owner.headers)
    assert read.headers["etag"] == created.headers["etag"]
    # Revalidation still works with the strong tag.
    again = await client.get(
        article_path("tagged"), headers={**owner.headers, "If-None-Match": read.headers["etag"]}
    )
    assert again.status_code == 304
    updated = await client.put(article_path("tagged"), json=edit("New"), headers=owner.headers)
    assert STRONG.fullmatch(updated.headers["etag"])
    assert updated.headers["etag"] != read.headers["etag"]


async def test_a_write_with_the_current_etag_succeeds_and_a_stale_one_gets_412(
    client: httpx.AsyncClient, owner: TestUser
) -> None:
    slug = (await make_article(client, owner))["slug"]
    etag = (await client.get(article_path(slug))).headers["etag"]
    first = await client.put(
        article_path(slug), json=edit("First"), headers={**owner.headers, "If-Match": etag}
    )
    assert first.status_code == 200
    stale = await client.patch(
        article_path(slug), json=edit("Second"), headers={**owner.headers, "If-Match": etag}
    )
    assert stale.status_code == 412
    assert stale.json() == STALE
    assert (await client.get(article_path(slug))).json()["article"]["title"] == "First"
    deleted_stale = await client.delete(
        article_path(slug), headers={**owner.headers, "If-Match": etag}
    )
    assert deleted_stale.status_code == 412
    current = first.headers["etag"]
    deleted = await client.delete(
        article_path(slug), headers={**owner.headers, "If-Match": current}
    )
    assert deleted.status_code == 204


async def test_lost_update_two_writers_with_one_etag_exactly_one_wins(
    client: httpx.AsyncClient, owner: TestUser
) -> None:
    slug = (await make_article(client, owner))["slug"]
    # Two clients read the same version...
    etag_a = (await client.get(article_path(slug), headers=owner.headers)).headers["etag"]
    etag_b = (await client.get(article_path(slug), headers=owner.headers)).headers["etag"]
    assert etag_a == etag_b
    for round_ in range(5):
        # ...and both write at once with it: one wins, the other is told it is stale.
        a, b = await asyncio.gather(
            client.put(
                article_path(slug),
                json=edit(f"A{round_}"),
                headers={**owner.headers, "If-Match": etag_a},
            ),
            client.put(
                article_path(slug),
                json=edit(f"B{round_}"),
                headers={**owner.headers, "If-Match": etag_b},
            ),
        )
        assert sorted([a.status_code, b.status_code]) == [200, 412]
        winner = a if a.status_code == 200 else b
        stored = (await client.get(article_path(slug))).json()["article"]["title"]
        assert stored == winner.json()["article"]["title"]
        etag_a = etag_b = winner.headers["etag"]


async def test_star_matches_any_version_and_weak_or_malformed_tags_none(
    client: httpx.AsyncClient, owner: TestUser
) -> None:
    slug = (await make_article(client, owner))["slug"]
    etag = (await client.get(article_path(slug))).headers["etag"]
    for value in (f"W/{etag}", "garbage", '"nope", W/"x"', '"' + "0" * 20 + etag[21:]):
        refused = await client.put(
            article_path(slug), json=edit("x"), headers={**owner.headers, "If-Match": value}
        )
        assert refused.status_code == 412, value
    listed = await client.put(
        article_path(slug),
        json=edit("listed"),
        headers={**owner.headers, "If-Match": f'"other.0", {etag}'},
    )
    assert listed.status_code == 200
    star = await client.put(
        article_path(slug), json=edit("star"), headers={**owner.headers, "If-Match": "*"}
    )
    assert star.status_code == 200


async def test_a_compressed_answer_keeps_a_strong_tag_that_matches(
    client: httpx.AsyncClient, owner: TestUser
) -> None:
    slug = (await make_article(client, owner, body="long " * 1000))["slug"]
    read = await client.get(article_path(slug), headers={"Accept-Encoding": "gzip"})
    assert read.headers["content-encoding"] == "gzip"
    etag = read.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{20}\.[0-9a-f]{16}-gzip"', etag)
    again = await client.get(
        article_path(slug), headers={"Accept-Encoding": "gzip", "If-None-Match": etag}
    )
    assert again.status_code == 304
    # Through Flask too (signed in: no response cache), and whatever the coding asked for.
    for coding in ("gzip", "identity"):
        signed_in = await client.get(
            article_path(slug),
            headers={**owner.headers, "Accept-Encoding": coding, "If-None-Match": etag},
        )
        assert signed_in.status_code == 304
    written = await client.put(
        article_path(slug), json=edit("zipped"), headers={**owner.headers, "If-Match": etag}
    )
    assert written.status_code == 200


async def test_counters_change_the_etag_but_not_the_version_if_match_compares(
    client: httpx.AsyncClient, owner: TestUser, make_user: MakeUser
) -> None:
    slug = (await make_article(client, owner))["slug"]
    before = (await client.get(article_path(slug))).headers["etag"]
    fan = await make_user()
    await client.post(f"{article_path(slug)}/favorite", headers=fan.headers)
    after = (await client.get(article_path(slug))).headers["etag"]
    assert after != before  # the representation changed: no 304 for the old tag
    assert before.split(".")[0] == after.split(".")[0]
    written = await client.put(
        article_path(slug), json=edit("still mine"), headers={**owner.headers, "If-Match": before}
    )
    assert written.status_code == 200


async def test_not_found_and_forbidden_come_before_the_precondition(
    client: httpx.AsyncClient, owner: TestUser, make_user: MakeUser
) -> None:
    slug = (await make_article(client, owner))["slug"]
    stranger = await make_user()
    headers = {**stranger.headers, "If-Match": '"stale.0"'}
    assert (
        await client.put(article_path(slug), json=edit("x"), headers=headers)
    ).status_code == 403
    missing = await client.put(article_path("nope"), json=edit("x"), headers=headers)
    assert missing.status_code == 404


async def test_comments_take_if_match_on_delete(client: httpx.AsyncClient, owner: TestUser) -> None:
    slug = (await make_article(client, owner))["slug"]
    created = await client.post(
        f"{article_path(slug)}/comments",
        json={"comment": {"body": "first!"}},
        headers=owner.headers,
    )
    etag = created.headers["etag"]
    assert STRONG.fullmatch(etag)
    comment_id = created.json()["comment"]["id"]
    other = await make_comment(client, owner, slug)
    path = f"{article_path(slug)}/comments/{comment_id}"
    wrong = await client.delete(path, headers={**owner.headers, "If-Match": '"0000.1"'})
    assert wrong.status_code == 412
    assert wrong.json() == STALE
    # Another comment's tag names another version.
    other_tag = (
        await client.post(
            f"{article_path(slug)}/comments",
            json={"comment": {"body": other["body"]}},
            headers=owner.headers,
        )
    ).headers["etag"]
    assert (
        await client.delete(path, headers={**owner.headers, "If-Match": other_tag})
    ).status_code == 412
    right = await client.delete(path, headers={**owner.headers, "If-Match": etag})
    assert right.status_code == 204


async def test_the_current_user_takes_if_match(client: httpx.AsyncClient, owner: TestUser) -> None:
    read = await client.get("/api/v1/user", headers=owner.headers)
    etag = read.headers["etag"]
    assert STRONG.fullmatch(etag)
    body = {"user": {"bio": "changed"}}
    first = await client.put("/api/v1/user", json=body, headers={**owner.headers, "If-Match": etag})
    assert first.status_code == 200
    assert first.headers["etag"] != etag
    stale = await client.patch(
        "/api/v1/user", json={"user": {"bio": "again"}}, headers={**owner.headers, "If-Match": etag}
    )
    assert stale.status_code == 412
    current = await client.patch(
        "/api/v1/user",
        json={"user": {"bio": "again"}},
        headers={**owner.headers, "If-Match": first.headers["etag"]},
    )
    assert current.status_code == 200


@pytest.mark.parametrize("required", [False, True])
async def test_precondition_required_setting(settings: Settings, required: bool) -> None:
    asgi = create_asgi(settings.model_copy(update={"precondition_required": required}))
    async with serving(asgi) as http:
        author = await make_user(asgi)
        slug = (await make_article(http, author))["slug"]
        bare = await http.put(article_path(slug), json=edit("bare"), headers=author.headers)
        if not required:
            assert bare.status_code == 200  # RealWorld clients send no If-Match
            return
        assert bare.status_code == 428
        assert list(bare.json()["errors"]) == ["If-Match"]
        etag = (await http.get(article_path(slug))).headers["etag"]
        conditional = await http.put(
            article_path(slug), json=edit("ok"), headers={**author.headers, "If-Match": etag}
        )
        assert conditional.status_code == 200
