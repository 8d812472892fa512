"""Cursor (keyset) pages and RFC 8288 `Link` headers of the lists; sort and search of articles."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from requests.utils import parse_header_links

from service.app import ConduitASGI
from service.services import article_order, audit
from tests.api.v1 import test_webhooks as webhook_support
from tests.factories import TestUser, follow, insert_articles, make_article, make_comment

MakeUser = Callable[..., Awaitable[TestUser]]


def links(response: httpx.Response) -> dict[str, str]:
    """The response's `Link` header by relation, parsed by requests' RFC 8288 parser."""
    parsed = parse_header_links(response.headers["link"])
    relations = [link["rel"] for link in parsed]
    assert len(relations) == len(set(relations)), response.headers["link"]
    return {link["rel"]: link["url"] for link in parsed}


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def slugs_of(response: httpx.Response) -> list[str]:
    return [article["slug"] for article in response.json()["articles"]]


async def walk(
    client: httpx.AsyncClient,
    url: str,
    *,
    relation: str = "next",
    headers: dict[str, str] | None = None,
    between: Callable[[int], Awaitable[Any]] | None = None,
) -> list[list[str]]:
    """Follow `relation` links from `url` to the end: the slugs of each page."""
    pages = []
    target: str | None = url
    while target is not None:
        fetch = client.get(target, headers=headers)
        if between is not None:
            response, _ = await asyncio.gather(fetch, between(len(pages)))
        else:
            response = await fetch
        assert response.status_code == 200, response.text
        pages.append(slugs_of(response))
        target = links(response).get(relation)
        assert len(pages) < 1000, "the walk does not end"
    return pages


def tampered(cursor: str) -> str:
    data, _, mac = cursor.partition(".")
    payload = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    changed = payload.replace(b'"b":0', b'"b":1')
    assert changed != payload
    return base64.urlsafe_b64encode(changed).rstrip(b"=").decode() + "." + mac


# --- cursor walks ---------------------------------------------------------------------------


@pytest.mark.parametrize("sort", [None, "createdAt"])
async def test_a_cursor_walk_sees_every_article_once_while_others_are_inserted(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser, sort: str | None
) -> None:
    author = await make_user()
    writer = await make_user()
    existing = await insert_articles(app, author, 1000)
    inserted: list[str] = []

    async def insert_two(page: int) -> None:
        # Alongside the fetches of pages 2-20: the first page is asked for without a cursor,
        # so an article committed while it is read may or may not be on it; and all are
        # committed before the last page of the old articles is read.
        if 1 <= page < 20:
            made = await asyncio.gather(*(make_article(client, writer) for _ in range(2)))
            inserted.extend(article["slug"] for article in made)

    url = "/api/v1/articles?limit=50" + (f"&sort={sort}" if sort else "")
    pages = await walk(client, url, between=insert_two)
    seen = [slug for page in pages for slug in page]
    assert len(seen) == len(set(seen))
    assert sorted(slug for slug in seen if slug.startswith("bulk-")) == sorted(existing)
    new_seen = [slug for slug in seen if not slug.startswith("bulk-")]
    if sort == "createdAt":
        # Oldest first: the new articles come after the old ones, and the walk reaches them.
        assert sorted(new_seen) == sorted(inserted)
        assert seen[: len(existing)] == [slug for slug in seen if slug.startswith("bulk-")]
    else:
        # Newest first: they are inserted before the walk's position, and never shift it.
        assert new_seen == []


async def test_prev_links_walk_back_through_the_same_pages(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    author = await make_user()
    await insert_articles(app, author, 23)
    forward = await walk(client, "/api/v1/articles?limit=5&tag=&sort=-createdAt")
    assert [len(page) for page in forward] == [5, 5, 5, 5, 3]
    last_page = await client.get("/api/v1/articles?limit=5&sort=-createdAt")
    for _ in range(4):
        last_page = await client.get(links(last_page)["next"])
    assert "next" not in links(last_page)
    backward = await walk(client, links(last_page)["prev"], relation="prev")
    assert backward == forward[-2::-1]


async def test_the_first_page_links_next_by_cursor_and_first_without_one(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    author = await make_user()
    await insert_articles(app, author, 3)
    response = await client.get("/api/v1/articles?limit=2&author=" + author.username)
    found = links(response)
    assert set(found) == {"next", "first"}
    assert query_of(found["next"]).keys() == {"limit", "author", "cursor"}
    assert query_of(found["next"])["author"] == [author.username]
    assert found["first"] == f"/api/v1/articles?limit=2&author={author.username}"
    following = await client.get(found["next"])
    assert set(links(following)) == {"prev", "first"}
    assert following.json()["articlesCount"] == 3


async def test_offset_pages_link_their_neighbours_by_offset(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    author = await make_user()
    await insert_articles(app, author, 7)
    middle = links(await client.get("/api/v1/articles?limit=3&offset=3"))
    assert middle == {
        "next": "/api/v1/articles?limit=3&offset=6",
        "prev": "/api/v1/articles?limit=3",
        "first": "/api/v1/articles?limit=3",
    }
    last = links(await client.get("/api/v1/articles?limit=3&offset=6"))
    assert set(last) == {"prev", "first"}
    assert last["prev"] == "/api/v1/articles?limit=3&offset=3"
    assert links(await client.get("/api/v1/articles"))["first"] == "/api/v1/articles"


async def test_an_empty_list_links_only_its_first_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/articles?limit=5")
    assert links(response) == {"first": "/api/v1/articles?limit=5"}


async def test_the_feed_pages_by_cursor(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    reader, author, other = await make_user(), await make_user(), await make_user()
    await follow(app, reader, author)
    mine = await insert_articles(app, author, 12, prefix="followed")
    await insert_articles(app, other, 5, prefix="other")
    pages = await walk(client, "/api/v1/articles/feed?limit=5", headers=reader.headers)
    assert [len(page) for page in pages] == [5, 5, 2]
    assert sorted(slug for page in pages for slug in page) == sorted(mine)


# --- cursors that are not ours --------------------------------------------------------------


async def test_a_changed_cursor_is_refused_in_the_error_envelope(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    author = await make_user()
    await insert_articles(app, author, 4)
    cursor = query_of(links(await client.get("/api/v1/articles?limit=2"))["next"])["cursor"][0]
    data, _, mac = cursor.partition(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    for bad in (tampered(cursor), f"{data}.{flipped}", "abc.def", f"{data}.", "x" * 20 + ".y"):
        response = await client.get("/api/v1/articles", params={"limit": 2, "cursor": bad})
        assert response.status_code == 422, (bad, response.text)
        assert response.json() == {"errors": {"cursor": [response.json()["errors"]["cursor"][0]]}}


async def test_a_cursor_of_another_sort_or_list_is_refused(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    author = await make_user()
    await insert_articles(app, author, 4)
    cursor = query_of(links(await client.get("/api/v1/articles?limit=2"))["next"])["cursor"][0]
    other_sort = await client.get(
        "/api/v1/articles", params={"cursor": cursor, "sort": "createdAt"}
    )
    assert other_sort.status_code == 422
    assert other_sort.json() == {"errors": {"cursor": ["belongs to another list or sort order"]}}
    feed = await client.get(
        "/api/v1/articles/feed", params={"cursor": cursor}, headers=author.headers
    )
    assert feed.status_code == 422
    both = await client.get("/api/v1/articles", params={"cursor": cursor, "offset": 2})
    assert both.status_code == 422
    assert "cursor" in both.json()["errors"]


async def test_a_cursor_made_with_another_secret_is_refused(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    author = await make_user()
    await insert_articles(app, author, 4)
    cursor = query_of(links(await client.get("/api/v1/articles?limit=2"))["next"])["cursor"][0]
    flask_app = app.flask_app
    key = flask_app.extensions.pop("conduit.cursor_key")
    flask_app.config["SECRET_KEY"], secret = "another-" + "y" * 40, flask_app.config["SECRET_KEY"]
    try:
        response = await client.get("/api/v1/articles", params={"limit": 2, "cursor": cursor})
    finally:
        flask_app.config["SECRET_KEY"] = secret
        flask_app.extensions["conduit.cursor_key"] = key
    assert response.status_code == 422


# --- the response cache ---------------------------------------------------------------------


async def test_cached_answers_keep_their_own_page_and_link_header(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    author = await make_user()
    await insert_articles(app, author, 6)
    first = await client.get("/api/v1/articles?limit=2")
    second_url = links(first)["next"]
    second = await client.get(second_url)
    ascending = await client.get("/api/v1/articles?limit=2&sort=createdAt")
    cache = app.pipeline.response_cache
    assert cache is not None
    hits = cache.stats.hits
    for _ in range(2):  # the repeats come from the caches
        again_first = await client.get("/api/v1/articles?limit=2")
        again_second = await client.get(second_url)
        again_ascending = await client.get("/api/v1/articles?limit=2&sort=createdAt")
        assert slugs_of(again_first) == slugs_of(first)
        assert again_first.headers["link"] == first.headers["link"]
        assert slugs_of(again_second) == slugs_of(second)
        assert again_second.headers["link"] == second.headers["link"]
        assert slugs_of(again_ascending) == slugs_of(ascending)
        assert again_ascending.headers["link"] == ascending.headers["link"]
    assert slugs_of(first) != slugs_of(second)
    assert slugs_of(first) != slugs_of(ascending)
    assert cache.stats.hits == hits + 6  # the repeats came from the response cache


# --- sort -----------------------------------------------------------------------------------


async def test_sort_orders_by_each_field_both_ways_with_filters(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake, anna, fan = await make_user(), await make_user(), await make_user()
    a = await make_article(client, jake, tags=["x"])
    b = await make_article(client, jake, tags=["x"])
    c = await make_article(client, jake, tags=["x"])
    await make_article(client, anna, tags=["x"])  # another author
    await make_article(client, jake, tags=["y"])  # another tag
    for slug, fans in ((a["slug"], [fan, anna]), (c["slug"], [fan])):
        for user in fans:
            favorited = await client.post(f"/api/v1/articles/{slug}/favorite", headers=user.headers)
            assert favorited.status_code == 200
    edited = await client.put(
        f"/api/v1/articles/{a['slug']}", json={"article": {"body": "new"}}, headers=jake.headers
    )
    assert edited.status_code == 200
    expected = {
        "createdAt": [a, b, c],
        "-createdAt": [c, b, a],
        "updatedAt": [b, c, a],
        "-updatedAt": [a, c, b],
        "favoritesCount": [b, c, a],
        "-favoritesCount": [a, c, b],
    }
    for sort, articles in expected.items():
        query = {"sort": sort, "tag": "x", "author": jake.username}
        response = await client.get("/api/v1/articles", params=query)
        assert response.status_code == 200, response.text
        assert slugs_of(response) == [article["slug"] for article in articles], sort
        assert response.json()["articlesCount"] == 3
        # Page by page, the same order.
        pages = await walk(client, "/api/v1/articles?limit=1&" + httpx.QueryParams(query).__str__())
        assert [page[0] for page in pages] == [article["slug"] for article in articles], sort
    counts = {
        item["slug"]: item["favoritesCount"]
        for item in (await client.get("/api/v1/articles?sort=-favoritesCount")).json()["articles"]
    }
    assert counts[a["slug"]] == 2
    assert counts[c["slug"]] == 1


async def test_unfavoriting_and_deleting_keep_the_favorites_count_sort_right(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake, fan = await make_user(), await make_user()
    a = await make_article(client, jake)
    b = await make_article(client, jake)
    await client.post(f"/api/v1/articles/{a['slug']}/favorite", headers=fan.headers)
    assert slugs_of(await client.get("/api/v1/articles?sort=-favoritesCount"))[0] == a["slug"]
    await client.delete(f"/api/v1/articles/{a['slug']}/favorite", headers=fan.headers)
    await client.post(f"/api/v1/articles/{b['slug']}/favorite", headers=fan.headers)
    assert slugs_of(await client.get("/api/v1/articles?sort=-favoritesCount"))[0] == b["slug"]
    listed = (await client.get("/api/v1/articles?sort=favoritesCount")).json()["articles"]
    assert [item["favoritesCount"] for item in listed] == [0, 1]


@pytest.mark.parametrize(
    "sort", ["title", "created_at", "+createdAt", "--createdAt", "-", "", "relevance"]
)
async def test_an_unknown_sort_is_a_422(client: httpx.AsyncClient, sort: str) -> None:
    response = await client.get("/api/v1/articles", params={"sort": sort})
    assert response.status_code == 422
    assert "sort" in response.json()["errors"]


# --- search ---------------------------------------------------------------------------------


async def test_search_matches_title_description_and_body_with_the_filters(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake, anna = await make_user(), await make_user()
    in_title = await make_article(client, jake, title="Training dragons", tags=["x"])
    in_description = await make_article(client, jake, description="about a dragon", tags=["x"])
    in_body = await make_article(client, jake, body="Dragons fly far.", tags=["y"])
    by_anna = await make_article(client, anna, body="a dragon again", tags=["x"])
    await make_article(client, jake, title="Cats", body="nothing to see", tags=["x"])

    def found(response: httpx.Response) -> set[str]:
        assert response.status_code == 200, response.text
        assert response.json()["articlesCount"] == len(response.json()["articles"])
        return set(slugs_of(response))

    everything = {in_title["slug"], in_description["slug"], in_body["slug"], by_anna["slug"]}
    assert found(await client.get("/api/v1/articles", params={"q": "dragon"})) == everything
    tagged = await client.get("/api/v1/articles", params={"q": "dragons", "tag": "x"})
    assert found(tagged) == {in_title["slug"], in_description["slug"], by_anna["slug"]}
    by_jake = {"q": "dragon", "tag": "x", "author": jake.username, "sort": "createdAt"}
    response = await client.get("/api/v1/articles", params=by_jake)
    assert slugs_of(response) == [in_title["slug"], in_description["slug"]]
    assert found(await client.get("/api/v1/articles", params={"q": "unicorn"})) == set()
    # websearch syntax: a phrase, and exclusion.
    phrase = await client.get("/api/v1/articles", params={"q": '"dragons fly"'})
    assert found(phrase) == {in_body["slug"]}
    excluded = await client.get("/api/v1/articles", params={"q": "dragon -fly"})
    assert found(excluded) == everything - {in_body["slug"]}


async def test_search_is_newest_first_or_ranked_by_relevance_and_pages_by_cursor(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user()
    once = await make_article(client, jake, title="A story", body="one dragon " + "word " * 200)
    thrice = await make_article(client, jake, title="Dragon", body="dragon dragon dragon")
    twice = await make_article(client, jake, title="Dragon tales", body="just words here")
    newest = await client.get("/api/v1/articles", params={"q": "dragon"})
    assert slugs_of(newest) == [twice["slug"], thrice["slug"], once["slug"]]
    ranked = await client.get("/api/v1/articles", params={"q": "dragon", "sort": "-relevance"})
    assert slugs_of(ranked) == [thrice["slug"], twice["slug"], once["slug"]]
    pages = await walk(client, "/api/v1/articles?q=dragon&sort=-relevance&limit=1")
    assert [page[0] for page in pages] == slugs_of(ranked)


async def test_relevance_needs_a_search_of_few_enough_matches(
    client: httpx.AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    jake = await make_user()
    for _ in range(3):
        await make_article(client, jake, body="dragon")
    alone = await client.get("/api/v1/articles", params={"sort": "-relevance"})
    assert alone.status_code == 422
    assert alone.json() == {"errors": {"sort": ["sorting by relevance needs a search (q)"]}}
    monkeypatch.setattr(article_order, "RANK_MAX", 2)
    many = await client.get("/api/v1/articles", params={"q": "dragon", "sort": "-relevance"})
    assert many.status_code == 422
    assert "too many to rank" in many.json()["errors"]["sort"][0]
    # Other orders of the same search are fine.
    fine = await client.get("/api/v1/articles", params={"q": "dragon", "sort": "createdAt"})
    assert fine.status_code == 200


@pytest.mark.parametrize("q", ["!!!", "&|", "a & | b", "'", ":*", "-", "or"])
async def test_search_text_of_any_shape_is_a_search_never_an_error(
    client: httpx.AsyncClient, make_user: MakeUser, q: str
) -> None:
    await make_article(client, await make_user())
    response = await client.get("/api/v1/articles", params={"q": q})
    assert response.status_code == 200, response.text


async def test_a_long_search_is_a_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/articles", params={"q": "x" * 201})
    assert response.status_code == 422
    assert "q" in response.json()["errors"]


# --- self links -----------------------------------------------------------------------------


async def test_an_article_links_itself(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    jake = await make_user()
    created = await client.post(
        "/api/v1/articles",
        json={"article": {"title": "Hello", "description": "d", "body": "b"}},
        headers=jake.headers,
    )
    assert links(created) == {"self": "/api/v1/articles/hello"}
    for _ in range(2):  # the second from the response cache
        read = await client.get("/api/v1/articles/hello")
        assert links(read) == {"self": "/api/v1/articles/hello"}
    signed_in = await client.get("/api/v1/articles/hello", headers=jake.headers)
    assert links(signed_in) == {"self": "/api/v1/articles/hello"}


# --- the other lists ------------------------------------------------------------------------


async def check_walks(
    client: httpx.AsyncClient, url: str, field: str, headers: dict[str, str], *, at_least: int
) -> None:
    """Walking `url` by cursor (2 a page), forward then back, gives the one-page list in order."""
    whole = await client.get(url, params={"limit": 100}, headers=headers)
    assert whole.status_code == 200, whole.text
    expected = [json_key(item) for item in whole.json()[field]]
    assert len(expected) >= at_least
    pages: list[list[str]] = []
    response = await client.get(url, params={"limit": 2}, headers=headers)
    while True:
        assert response.status_code == 200, response.text
        pages.append([json_key(item) for item in response.json()[field]])
        found = links(response)
        if "next" not in found:
            break
        response = await client.get(found["next"], headers=headers)
    assert [item for page in pages for item in page] == expected
    back: list[list[str]] = []
    while "prev" in links(response):
        response = await client.get(links(response)["prev"], headers=headers)
        back.append([json_key(item) for item in response.json()[field]])
    assert back == pages[-2::-1]


def json_key(item: dict[str, Any]) -> str:
    return str(item.get("id") or item.get("username"))


async def test_admin_lists_page_by_cursor(
    client: httpx.AsyncClient, make_user: MakeUser, maker: Any
) -> None:
    boss = await make_user(role="admin")
    for _ in range(4):
        await make_user()
    async with maker() as session:
        for n in range(5):
            await audit.record(
                session=session,
                actor=None,
                action="user.role",
                target_type="user",
                target_id=n,
                details=None,
            )
        await session.commit()  # one transaction: the entries tie on created_at
    await check_walks(client, "/api/v1/admin/users", "users", boss.headers, at_least=5)
    await check_walks(client, "/api/v1/admin/audit", "entries", boss.headers, at_least=5)


async def test_webhook_lists_page_by_cursor(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    jake = await make_user()
    made = [await webhook_support.created(client, jake) for _ in range(3)]
    moment = datetime.now(UTC)
    for _ in range(5):  # the same moment: only their ids order them
        await webhook_support.add_message(app, made[0]["id"], created_at=moment)
    await webhook_support.add_message(app, made[0]["id"])
    await check_walks(client, "/api/v1/webhooks", "webhooks", jake.headers, at_least=3)
    messages = f"/api/v1/webhooks/{made[0]['id']}/messages"
    await check_walks(client, messages, "messages", jake.headers, at_least=6)
    # A cursor of one endpoint's log is not valid on another's.
    first = await client.get(messages, params={"limit": 2}, headers=jake.headers)
    cursor = query_of(links(first)["next"])["cursor"][0]
    other = await client.get(
        f"/api/v1/webhooks/{made[1]['id']}/messages",
        params={"cursor": cursor},
        headers=jake.headers,
    )
    assert other.status_code == 422


async def test_profiles_users_and_webhooks_link_themselves(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    jake, anna = await make_user(username="Jake"), await make_user()
    for _ in range(2):  # the second from the response cache
        profile = await client.get("/api/v1/profiles/jake")
        assert links(profile) == {"self": "/api/v1/profiles/Jake"}
    followed = await client.post("/api/v1/profiles/jake/follow", headers=anna.headers)
    assert links(followed) == {"self": "/api/v1/profiles/Jake"}
    assert links(await client.get("/api/v1/user", headers=jake.headers)) == {"self": "/api/v1/user"}
    webhook = await webhook_support.created(client, jake)
    path = f"/api/v1/webhooks/{webhook['id']}"
    assert links(await client.get(path, headers=jake.headers)) == {"self": path}
    message_id = await webhook_support.add_message(app, webhook["id"])
    message = await client.get(f"{path}/messages/{message_id}", headers=jake.headers)
    assert links(message) == {"self": f"{path}/messages/{message_id}"}


async def test_comments_are_all_listed_unless_paged_and_page_by_cursor(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user()
    article = await make_article(client, jake)
    other = await make_article(client, jake)
    path = f"/api/v1/articles/{article['slug']}/comments"
    made = [(await make_comment(client, jake, article["slug"]))["id"] for _ in range(5)]
    everything = await client.get(path)
    assert [comment["id"] for comment in everything.json()["comments"]] == made
    assert links(everything) == {"first": path}
    pages = []
    response = await client.get(path, params={"limit": 2})
    while True:
        pages.append([comment["id"] for comment in response.json()["comments"]])
        if "next" not in links(response):
            break
        response = await client.get(links(response)["next"])
    assert pages == [made[:2], made[2:4], made[4:]]
    back = await client.get(links(response)["prev"])
    assert [comment["id"] for comment in back.json()["comments"]] == made[2:4]
    by_offset = await client.get(path, params={"offset": 3})
    assert [comment["id"] for comment in by_offset.json()["comments"]] == made[3:]
    cursor = query_of(links(back)["next"])["cursor"][0]
    foreign = await client.get(
        f"/api/v1/articles/{other['slug']}/comments", params={"cursor": cursor}
    )
    assert foreign.status_code == 422
    for _ in range(2):  # the second from the response cache
        again = await client.get(path, params={"limit": 2})
        assert [comment["id"] for comment in again.json()["comments"]] == made[:2]
        assert "next" in links(again)


async def test_links_of_paths_with_any_text_are_ascii(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user()
    article = await make_article(client, jake, title="Ça va ü 漢字")
    assert not article["slug"].isascii()
    for _ in range(2):
        await make_comment(client, jake, article["slug"])
    path = f"/api/v1/articles/{quote(article['slug'])}/comments"
    for query in ("", "?limit=1", "?offset=127"):
        response = await client.get(path + query)
        assert response.status_code == 200, response.text
        assert response.headers["link"].isascii()
        assert links(response)["first"].startswith(path)
    read = await client.get(f"/api/v1/articles/{quote(article['slug'])}")
    assert links(read) == {"self": f"/api/v1/articles/{quote(article['slug'], safe='')}"}
    following = await client.get(links(await client.get(path + "?limit=1"))["next"])
    assert following.status_code == 200
