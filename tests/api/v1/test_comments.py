"""Comments on articles: list, add, delete."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from service.app import ConduitASGI
from tests.factories import TestUser, follow, make_article, make_comment

MakeUser = Callable[..., Awaitable[TestUser]]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# --- create -------------------------------------------------------------------------------


async def test_create_comment_answers_200_with_the_comment(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, reader = await make_user(), await make_user(username="reader", bio="hi")
    slug = (await make_article(client, author))["slug"]
    response = await client.post(
        f"/api/v1/articles/{slug}/comments",
        json={"comment": {"body": "Thank you so much!"}},
        headers=reader.headers,
    )
    assert response.status_code == 200
    comment = response.json()["comment"]
    assert isinstance(comment.pop("id"), int)
    created, updated = comment.pop("createdAt"), comment.pop("updatedAt")
    assert TIMESTAMP.match(created)
    assert created == updated
    assert comment == {
        "body": "Thank you so much!",
        "author": {"username": "reader", "bio": "hi", "image": "", "following": False},
    }


async def test_comment_body_is_stored_verbatim(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    slug = (await make_article(client, user))["slug"]
    body = "  '); DROP TABLE comments;-- \n    code 日本語 🐉 %_\\"
    assert (await make_comment(client, user, slug, body=body))["body"] == body
    listed = (await client.get(f"/api/v1/articles/{slug}/comments")).json()["comments"]
    assert [c["body"] for c in listed] == [body]


async def test_comment_body_may_be_10000_characters(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    slug = (await make_article(client, user))["slug"]
    assert len((await make_comment(client, user, slug, body="é" * 10_000))["body"]) == 10_000


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"comment": {}}, "body"),
        ({"comment": {"body": ""}}, "body"),
        ({"comment": {"body": "  \n "}}, "body"),
        ({"comment": {"body": None}}, "body"),
        ({"comment": {"body": 42}}, "body"),
        ({"comment": {"body": ["x"]}}, "body"),
        ({"comment": {"body": "x" * 10_001}}, "body"),
        ({"comment": {"body": "a\x00b"}}, "body"),
        ({"comment": "text"}, "comment"),
        ({}, "comment"),
    ],
)
async def test_create_comment_validation_names_the_field(
    client: httpx.AsyncClient, make_user: MakeUser, payload: dict[str, Any], field: str
) -> None:
    user = await make_user()
    slug = (await make_article(client, user))["slug"]
    response = await client.post(
        f"/api/v1/articles/{slug}/comments", json=payload, headers=user.headers
    )
    assert response.status_code == 422
    assert list(response.json()["errors"]) == [field]


async def test_create_comment_malformed_json_is_400(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    slug = (await make_article(client, user))["slug"]
    response = await client.post(
        f"/api/v1/articles/{slug}/comments",
        content=b'{"comment": {"body": "x"}',
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400


async def test_create_comment_requires_a_token(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    slug = (await make_article(client, await make_user()))["slug"]
    response = await client.post(
        f"/api/v1/articles/{slug}/comments", json={"comment": {"body": "x"}}
    )
    assert response.status_code == 401


@pytest.mark.parametrize("slug", ["nope", "a%00b"])
async def test_create_comment_on_unknown_article_is_404(
    client: httpx.AsyncClient, make_user: MakeUser, slug: str
) -> None:
    user = await make_user()
    response = await client.post(
        f"/api/v1/articles/{slug}/comments", json={"comment": {"body": "x"}}, headers=user.headers
    )
    assert response.status_code == 404
    assert list(response.json()["errors"]) == ["article"]


# --- list ---------------------------------------------------------------------------------


async def test_list_comments_oldest_first_for_this_article_only(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, reader = await make_user(), await make_user()
    slug = (await make_article(client, author, title="one"))["slug"]
    other = (await make_article(client, author, title="two"))["slug"]
    first = await make_comment(client, reader, slug, body="first")
    second = await make_comment(client, author, slug, body="second")
    await make_comment(client, reader, other, body="elsewhere")
    response = await client.get(f"/api/v1/articles/{slug}/comments")
    assert response.status_code == 200
    assert response.json() == {"comments": [first, second]}


async def test_list_comments_is_empty_without_comments(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    slug = (await make_article(client, await make_user()))["slug"]
    response = await client.get(f"/api/v1/articles/{slug}/comments")
    assert response.json() == {"comments": []}


async def test_list_comments_shows_following_for_the_viewer(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, commenter, fan = await make_user(), await make_user(), await make_user()
    slug = (await make_article(client, author))["slug"]
    await make_comment(client, commenter, slug)
    await follow(app, fan, commenter)
    url = f"/api/v1/articles/{slug}/comments"
    assert (await client.get(url, headers=fan.headers)).json()["comments"][0]["author"][
        "following"
    ] is True
    assert (await client.get(url, headers=author.headers)).json()["comments"][0]["author"][
        "following"
    ] is False
    assert (await client.get(url)).json()["comments"][0]["author"]["following"] is False


@pytest.mark.parametrize("slug", ["nope", "a%00b", "x" * 3000])
async def test_list_comments_of_unknown_article_is_404(
    client: httpx.AsyncClient, slug: str
) -> None:
    response = await client.get(f"/api/v1/articles/{slug}/comments")
    assert response.status_code == 404


# --- delete -------------------------------------------------------------------------------


async def test_delete_comment_answers_204_and_removes_it(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, reader = await make_user(), await make_user()
    slug = (await make_article(client, author))["slug"]
    gone = await make_comment(client, reader, slug, body="gone")
    kept = await make_comment(client, reader, slug, body="kept")
    url = f"/api/v1/articles/{slug}/comments/{gone['id']}"
    response = await client.delete(url, headers=reader.headers)
    assert response.status_code == 204
    assert response.content == b""
    listed = await client.get(f"/api/v1/articles/{slug}/comments")
    assert listed.json() == {"comments": [kept]}
    again = await client.delete(url, headers=reader.headers)
    assert again.status_code == 404
    assert list(again.json()["errors"]) == ["comment"]


async def test_delete_someone_elses_comment_is_403(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, reader = await make_user(), await make_user()
    slug = (await make_article(client, author))["slug"]
    comment = await make_comment(client, reader, slug)
    # Not even the article's author may delete a reader's comment.
    response = await client.delete(
        f"/api/v1/articles/{slug}/comments/{comment['id']}", headers=author.headers
    )
    assert response.status_code == 403
    assert list(response.json()["errors"]) == ["comment"]
    listed = await client.get(f"/api/v1/articles/{slug}/comments")
    assert listed.json() == {"comments": [comment]}


async def test_delete_comment_through_another_article_is_404(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    slug = (await make_article(client, user, title="one"))["slug"]
    other = (await make_article(client, user, title="two"))["slug"]
    comment = await make_comment(client, user, slug)
    response = await client.delete(
        f"/api/v1/articles/{other}/comments/{comment['id']}", headers=user.headers
    )
    assert response.status_code == 404
    assert len((await client.get(f"/api/v1/articles/{slug}/comments")).json()["comments"]) == 1


@pytest.mark.parametrize("comment_id", ["999", "0", "99999999999999999999999999"])
async def test_delete_unknown_comment_is_404(
    client: httpx.AsyncClient, make_user: MakeUser, comment_id: str
) -> None:
    user = await make_user()
    slug = (await make_article(client, user))["slug"]
    response = await client.delete(
        f"/api/v1/articles/{slug}/comments/{comment_id}", headers=user.headers
    )
    assert response.status_code == 404
    assert list(response.json()["errors"]) == ["comment"]


@pytest.mark.parametrize("comment_id", ["abc", "-1", "+1", "1.5", "1%00", "%D9%A1"])
async def test_delete_comment_with_non_integer_id_is_404(
    client: httpx.AsyncClient, make_user: MakeUser, comment_id: str
) -> None:
    user = await make_user()
    slug = (await make_article(client, user))["slug"]
    response = await client.delete(
        f"/api/v1/articles/{slug}/comments/{comment_id}", headers=user.headers
    )
    assert response.status_code == 404
    # No route matched: the id is documented as an integer, written with ASCII digits.
    assert response.json() == {"errors": {"body": ["not found"]}}


async def test_comment_id_in_other_digits_does_not_name_the_comment(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    slug = (await make_article(client, user))["slug"]
    comment = await make_comment(client, user, slug)
    arabic_indic = "".join(chr(0x0660 + int(digit)) for digit in str(comment["id"]))

    response = await client.delete(
        f"/api/v1/articles/{slug}/comments/{quote(arabic_indic)}", headers=user.headers
    )

    assert response.status_code == 404
    assert len((await client.get(f"/api/v1/articles/{slug}/comments")).json()["comments"]) == 1


async def test_delete_comment_of_unknown_article_is_404(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    slug = (await make_article(client, user))["slug"]
    comment = await make_comment(client, user, slug)
    response = await client.delete(
        f"/api/v1/articles/nope/comments/{comment['id']}", headers=user.headers
    )
    assert response.status_code == 404
    assert list(response.json()["errors"]) == ["article"]


async def test_delete_comment_requires_a_token(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    slug = (await make_article(client, user))["slug"]
    comment = await make_comment(client, user, slug)
    response = await client.delete(f"/api/v1/articles/{slug}/comments/{comment['id']}")
    assert response.status_code == 401


async def test_comments_racing_an_article_delete_never_fail_with_500(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, reader = await make_user(), await make_user()
    for round_ in range(3):
        slug = (await make_article(client, author, title=f"race {round_}"))["slug"]
        posts = [
            client.post(
                f"/api/v1/articles/{slug}/comments",
                json={"comment": {"body": f"c{i}"}},
                headers=reader.headers,
            )
            for i in range(6)
        ]
        deletion = client.delete(f"/api/v1/articles/{slug}", headers=author.headers)
        responses = await asyncio.gather(*posts[:3], deletion, *posts[3:])
        assert responses[3].status_code == 204
        assert {r.status_code for r in responses} <= {200, 204, 404}, [r.text for r in responses]
        assert (await client.get(f"/api/v1/articles/{slug}/comments")).status_code == 404
