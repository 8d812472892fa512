"""The articles service on a real session: slug retries, savepoints, tags, updates."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.domain.errors import NotFound, PermissionDenied
from service.models import Article, ArticleTag, Tag, User
from service.schemas.article import ArticleCreate, ArticleUpdate, sort_tags
from service.services import articles, tags
from tests.factories import TestUser

MakeUser = Callable[..., Awaitable[TestUser]]


async def user_row(session: AsyncSession, make_user: MakeUser) -> User:
    made = await make_user()
    user = await session.get(User, made.id)
    assert user is not None
    return user


def new(title: str = "Dragons", tag_list: list[str] | None = None) -> ArticleCreate:
    return ArticleCreate.model_validate(
        {"title": title, "description": "d", "body": "b", "tagList": tag_list or []}
    )


async def test_taken_slugs_are_skipped_inside_one_transaction(
    session: AsyncSession, make_user: MakeUser
) -> None:
    author = await user_row(session, make_user)
    first = await articles.create_article(session=session, author=author, data=new())
    second = await articles.create_article(session=session, author=author, data=new())
    third = await articles.create_article(session=session, author=author, data=new("dragons!"))
    assert [first.article.slug, second.article.slug, third.article.slug] == [
        "dragons",
        "dragons-2",
        "dragons-3",
    ]
    # The failed inserts were rolled back to their savepoints: the transaction is still usable.
    count = await session.scalar(select(func.count()).select_from(Article))
    assert count == 3
    await session.commit()


async def test_random_suffix_after_the_numbered_ones(
    session: AsyncSession, make_user: MakeUser
) -> None:
    author = await user_row(session, make_user)
    for slug in ["busy", *(f"busy-{n}" for n in range(2, 7))]:
        session.add(Article(slug=slug, title="t", description="d", body="b", author_id=author.id))
    await session.flush()
    view = await articles.create_article(session=session, author=author, data=new("Busy"))
    assert re.fullmatch(r"busy-[0-9a-f]{8}", view.article.slug)


async def test_other_integrity_errors_are_not_mistaken_for_slug_clashes(
    session: AsyncSession,
) -> None:
    ghost = User(id=987_654, username="ghost", email="ghost@example.com", password_hash="x")
    with pytest.raises(IntegrityError) as raised:
        await articles.create_article(session=session, author=ghost, data=new())
    assert articles._constraint_name(raised.value) == "fk_articles_author_id_users"


async def test_create_links_tags_once_and_reuses_existing_tags(
    session: AsyncSession, make_user: MakeUser
) -> None:
    author = await user_row(session, make_user)
    one = await articles.create_article(
        session=session, author=author, data=new(tag_list=["b", "a", " b"])
    )
    two = await articles.create_article(session=session, author=author, data=new(tag_list=["a"]))
    assert one.tags == ["a", "b"]
    assert two.tags == ["a"]
    assert await session.scalar(select(func.count()).select_from(Tag)) == 2
    assert await session.scalar(select(func.count()).select_from(ArticleTag)) == 3


async def test_update_keeps_the_slug_and_replaces_tags(
    session: AsyncSession, make_user: MakeUser
) -> None:
    author = await user_row(session, make_user)
    created = await articles.create_article(
        session=session, author=author, data=new(tag_list=["old"])
    )
    await session.commit()
    change = ArticleUpdate.model_validate({"title": "Something else", "tagList": ["new"]})
    updated = await articles.update_article(
        session=session, viewer=author, slug=created.article.slug, data=change
    )
    assert updated.article.slug == "dragons"
    assert updated.article.title == "Something else"
    assert updated.tags == ["new"]
    assert updated.article.updated_at > created.article.created_at
    assert await tags.list_tags(session=session) == ["new"]


async def test_update_and_delete_check_the_author(
    session: AsyncSession, make_user: MakeUser
) -> None:
    author = await user_row(session, make_user)
    other = await user_row(session, make_user)
    created = await articles.create_article(session=session, author=author, data=new())
    change = ArticleUpdate.model_validate({"body": "x"})
    with pytest.raises(PermissionDenied):
        await articles.update_article(
            session=session, viewer=other, slug=created.article.slug, data=change
        )
    with pytest.raises(PermissionDenied):
        await articles.delete_article(session=session, viewer=other, slug=created.article.slug)
    with pytest.raises(NotFound):
        await articles.delete_article(session=session, viewer=author, slug="missing")
    await articles.delete_article(session=session, viewer=author, slug=created.article.slug)
    with pytest.raises(NotFound):
        await articles.get_article(session=session, viewer=None, slug=created.article.slug)


async def test_list_counts_all_pages(session: AsyncSession, make_user: MakeUser) -> None:
    author = await user_row(session, make_user)
    for i in range(3):
        await articles.create_article(session=session, author=author, data=new(f"t{i}"))
    page = await articles.list_articles(session=session, viewer=None, limit=2, offset=2)
    assert page.total == 3
    assert [view.article.title for view in page.items] == ["t0"]


@pytest.mark.parametrize(
    ("names", "ordered"),
    [
        (["b", "a", "C"], ["a", "b", "C"]),
        (["a", "A", "b", "B"], ["A", "a", "B", "b"]),
        (["é", "e", "f"], ["e", "f", "é"]),
        ([], []),
    ],
)
def test_sort_tags(names: list[str], ordered: list[str]) -> None:
    assert sort_tags(names) == ordered
