"""GET /profiles/{username}, POST and DELETE /profiles/{username}/follow."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
import pytest

from tests.factories import TestUser

MakeUser = Callable[..., Awaitable[TestUser]]


def profile_url(username: str) -> str:
    return f"/api/v1/profiles/{username}"


def follow_url(username: str) -> str:
    return f"/api/v1/profiles/{username}/follow"


async def follow_pairs(database_url: str) -> list[tuple[int, int]]:
    """Every (follower_id, followee_id) row, ordered."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT follower_id, followee_id FROM follows ORDER BY follower_id, followee_id"
        )
    finally:
        await conn.close()
    return [(row["follower_id"], row["followee_id"]) for row in rows]


async def test_get_profile_anonymously(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    await make_user(username="jake", bio="I work at statefarm", image="https://x.io/j.png")

    response = await client.get(profile_url("jake"))

    assert response.status_code == 200
    assert response.json() == {
        "profile": {
            "username": "jake",
            "bio": "I work at statefarm",
            "image": "https://x.io/j.png",
            "following": False,
        }
    }


async def test_get_profile_without_bio_or_image_gives_empty_strings(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(username="jake")

    response = await client.get(profile_url("jake"))

    assert response.json() == {
        "profile": {"username": "jake", "bio": "", "image": "", "following": False}
    }


async def test_get_profile_as_a_follower_and_as_someone_else(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    celeb = await make_user(username="celeb")
    other = await make_user(username="other")
    assert (await client.post(follow_url("celeb"), headers=jake.headers)).status_code == 200

    as_follower = await client.get(profile_url("celeb"), headers=jake.headers)
    as_other = await client.get(profile_url("celeb"), headers=other.headers)
    own = await client.get(profile_url("celeb"), headers=celeb.headers)

    assert as_follower.json()["profile"]["following"] is True
    assert as_other.json()["profile"]["following"] is False
    assert own.json()["profile"]["following"] is False


async def test_get_profile_with_an_invalid_token_is_401(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(username="jake")

    response = await client.get(profile_url("jake"), headers={"Authorization": "Token nope"})

    assert response.status_code == 401


@pytest.mark.parametrize("lookup", ["JAKE", "jake", "jAkE"])
async def test_profile_lookup_is_case_insensitive(
    client: httpx.AsyncClient, make_user: MakeUser, lookup: str
) -> None:
    await make_user(username="Jake")

    response = await client.get(profile_url(lookup))

    assert response.status_code == 200
    assert response.json()["profile"]["username"] == "Jake"


@pytest.mark.parametrize(
    "username", ["nobody", "x" * 65, "ja%20ke", "ja%00ke", "%E2%9C%93", "ja'ke", "..."]
)
async def test_unknown_profile_is_404(
    client: httpx.AsyncClient, make_user: MakeUser, username: str
) -> None:
    jake = await make_user(username="jake")

    anonymous = await client.get(profile_url(username))
    follow = await client.post(follow_url(username), headers=jake.headers)
    unfollow = await client.delete(follow_url(username), headers=jake.headers)

    for response in (anonymous, follow, unfollow):
        assert response.status_code == 404
        assert response.json() == {"errors": {"profile": ["not found"]}}


async def test_follow_and_unfollow_round_trip(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    celeb = await make_user(username="celeb", bio="famous")

    followed = await client.post(follow_url("celeb"), headers=jake.headers)

    assert followed.status_code == 200
    assert followed.json() == {
        "profile": {"username": "celeb", "bio": "famous", "image": "", "following": True}
    }
    assert await follow_pairs(database_url) == [(jake.id, celeb.id)]

    unfollowed = await client.delete(follow_url("celeb"), headers=jake.headers)

    assert unfollowed.status_code == 200
    assert unfollowed.json() == {
        "profile": {"username": "celeb", "bio": "famous", "image": "", "following": False}
    }
    assert await follow_pairs(database_url) == []
    after = await client.get(profile_url("celeb"), headers=jake.headers)
    assert after.json()["profile"]["following"] is False


async def test_follow_twice_is_idempotent(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    celeb = await make_user(username="celeb")

    first = await client.post(follow_url("celeb"), headers=jake.headers)
    second = await client.post(follow_url("CELEB"), headers=jake.headers)

    assert first.status_code == second.status_code == 200
    assert second.json()["profile"]["following"] is True
    assert await follow_pairs(database_url) == [(jake.id, celeb.id)]


async def test_concurrent_follows_of_the_same_user_all_succeed(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    celeb = await make_user(username="celeb")

    responses = await asyncio.gather(
        *(client.post(follow_url("celeb"), headers=jake.headers) for _ in range(5))
    )

    assert [response.status_code for response in responses] == [200] * 5
    assert await follow_pairs(database_url) == [(jake.id, celeb.id)]


async def test_unfollow_someone_not_followed_is_idempotent(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    await make_user(username="celeb")

    first = await client.delete(follow_url("celeb"), headers=jake.headers)
    second = await client.delete(follow_url("celeb"), headers=jake.headers)

    assert first.status_code == second.status_code == 200
    assert second.json()["profile"]["following"] is False
    assert await follow_pairs(database_url) == []


async def test_unfollow_keeps_other_follows(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    celeb = await make_user(username="celeb")
    star = await make_user(username="star")
    other = await make_user(username="other")
    await client.post(follow_url("celeb"), headers=jake.headers)
    await client.post(follow_url("star"), headers=jake.headers)
    await client.post(follow_url("celeb"), headers=other.headers)

    await client.delete(follow_url("celeb"), headers=jake.headers)

    assert await follow_pairs(database_url) == sorted([(jake.id, star.id), (other.id, celeb.id)])


@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize("lookup", ["jake", "JAKE"])
async def test_follow_or_unfollow_yourself_is_403(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str, method: str, lookup: str
) -> None:
    jake = await make_user(username="jake")

    response = await client.request(method, follow_url(lookup), headers=jake.headers)

    assert response.status_code == 403
    assert response.json() == {"errors": {"username": ["you cannot follow or unfollow yourself"]}}
    assert await follow_pairs(database_url) == []


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_follow_requires_a_token(
    client: httpx.AsyncClient, make_user: MakeUser, method: str
) -> None:
    await make_user(username="celeb")

    response = await client.request(method, follow_url("celeb"))

    assert response.status_code == 401
    assert response.json() == {"errors": {"token": ["authentication required"]}}


async def test_follow_ignores_a_request_body(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    # The RealWorld Postman collection sends {"user": {"email": ...}} with this request.
    jake = await make_user(username="jake")
    await make_user(username="celeb")

    response = await client.post(
        follow_url("celeb"), json={"user": {"email": jake.email}}, headers=jake.headers
    )

    assert response.status_code == 200
    assert response.json()["profile"]["following"] is True


async def test_profile_of_a_username_with_dots_and_dashes(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(username="j.r-r_tolkien")

    response = await client.get(profile_url("j.r-r_tolkien"))

    assert response.status_code == 200
    assert response.json()["profile"]["username"] == "j.r-r_tolkien"


async def test_openapi_documents_the_profile_operations(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/openapi.json")

    paths = response.json()["paths"]
    get_op = paths["/api/v1/profiles/{username}"]["get"]
    follow_op = paths["/api/v1/profiles/{username}/follow"]["post"]
    unfollow_op = paths["/api/v1/profiles/{username}/follow"]["delete"]
    assert get_op["tags"] == follow_op["tags"] == unfollow_op["tags"] == ["Profile"]
    assert get_op["summary"] == "Get a profile."
    assert get_op["security"] == [{"OAuth2": ["articles:read"]}, {"Token": []}, {}]
    for op, extra in ((follow_op, {"409", "422"}), (unfollow_op, set())):
        # Following takes an Idempotency-Key: 409 while one is in use, 422 when reused.
        assert set(op["responses"]) == {"200", "401", "403", "404", "429", "503"} | extra
        forbidden = op["responses"]["403"]["content"]["application/json"]["example"]
        assert forbidden == {"errors": {"username": ["you cannot follow or unfollow yourself"]}}
    assert follow_op["security"] == [{"OAuth2": ["profile:write"]}, {"Token": []}]
