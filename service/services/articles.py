"""Articles, their tags and favorites.

Reads build each article with its author, tags, favorites count and the viewer's `favorited`
and `following` in ONE statement (correlated subqueries): a list costs the same number of
statements whatever its length.

Slugs come from the title when an article is created and then never change, so links to an
article keep working after its title is edited. The `uq_articles_slug` constraint decides
uniqueness: each candidate is inserted inside a savepoint and the next one is tried on a
violation, so concurrent creates with one title all succeed with distinct slugs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    String,
    bindparam,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from service.caching import generations
from service.domain import events
from service.domain.articles import NEWEST, ArticleSort, ArticleView
from service.domain.errors import Conflict, NotFound, PermissionDenied
from service.domain.pages import Page, Position, Window
from service.models import Article, ArticleTag, Favorite, Follow, Tag, User
from service.schemas.article import ArticleCreate, ArticleUpdate, sort_tags
from service.services import admin, article_order, audit, keyset, sessions, slugs
from service.services.keyset import Ordering
from service.services.sql import any_ids
from service.webhooks import catalogue, outbox

SLUG_CONSTRAINT = "uq_articles_slug"


def storable(key: str) -> bool:
    """Whether `key` can be compared with a text column (PostgreSQL text holds no NUL)."""
    # PostgreSQL text cannot hold NUL: such a key matches nothing and must not reach the DB.
    return "\x00" not in key


# The viewer's id in statements built once: bound per run, like every other value in them.
_VIEWER = bindparam("viewer_id", type_=BigInteger)


def _views_statement(*, with_viewer: bool, with_body: bool) -> Select[Any]:
    tags = (
        select(func.array_agg(Tag.name))
        .join_from(ArticleTag, Tag, ArticleTag.tag_id == Tag.id)
        .where(ArticleTag.article_id == Article.id)
        .scalar_subquery()
    )
    # Kept exact by triggers on `favorites` (migration 0007): no count per row.
    favorites_count = Article.favorites_count
    favorited: ColumnElement[bool] = false()
    following: ColumnElement[bool] = false()
    if with_viewer:
        favorited = exists().where(Favorite.article_id == Article.id, Favorite.user_id == _VIEWER)
        following = exists().where(
            Follow.follower_id == _VIEWER, Follow.followee_id == Article.author_id
        )
    statement = (
        select(Article, User, tags, favorites_count, favorited, following)
        .join(User, User.id == Article.author_id)
        # Rows written earlier in this transaction must show their new values.
        .execution_options(populate_existing=True)
    )
    if not with_body:
        # List items have no body; up to 100 kB each is not worth reading.
        statement = statement.options(defer(Article.body, raiseload=True))
    return statement


def _viewer_parameters(viewer: User | None) -> dict[str, Any]:
    return {} if viewer is None else {"viewer_id": viewer.id}


async def _views(
    session: AsyncSession, viewer: User | None, rows: Sequence[Any]
) -> list[ArticleView]:
    return [
        ArticleView(
            article=article,
            author=author,
            tags=list(tags or ()),
            favorited=bool(favorited),
            favorites_count=int(count),
            following=bool(following),
        )
        # Columns after these are the page's sort key (service.services.keyset).
        for article, author, tags, count, favorited, following, *_ in rows
    ]


@functools.cache
def _single_statement(with_viewer: bool) -> Select[Any]:
    # Built once: SQLAlchemy then computes its cache key once, not at every run.
    statement = _views_statement(with_viewer=with_viewer, with_body=True)
    return statement.where(Article.slug == bindparam("slug", type_=String))


async def _one(session: AsyncSession, viewer: User | None, slug: str) -> ArticleView:
    if storable(slug):
        statement = _single_statement(viewer is not None)
        parameters = {"slug": slug} | _viewer_parameters(viewer)
        found = await _views(session, viewer, (await session.execute(statement, parameters)).all())
        if found:
            return found[0]
    raise NotFound("article not found", field="article")


@dataclass(frozen=True)
class _ListShape:
    """What decides a list statement's text (the values are bound per run): its filters, the
    viewer's part, the order and the kind of window."""

    filters: tuple[str, ...]
    with_viewer: bool
    sort: ArticleSort
    language: str
    # None: from an offset; else after (False) or before (True) a position.
    backward: bool | None


def _named_user(parameter: str) -> Select[Any]:
    # Usernames are unique regardless of case (index on lower(username)).
    name = bindparam(parameter, type_=String)
    return select(User.id).where(func.lower(User.username) == func.lower(name))


# Each filter of the lists, by the name of the parameter that holds its value.
_FILTERS: dict[str, Callable[[str], ColumnElement[bool]]] = {
    "q": article_order.matches,
    "tag": lambda _: Article.id.in_(
        select(ArticleTag.article_id)
        .join(Tag, Tag.id == ArticleTag.tag_id)
        .where(Tag.name == bindparam("tag", type_=String))
    ),
    "author": lambda _: Article.author_id.in_(_named_user("author")),
    "favorited": lambda _: Article.id.in_(
        select(Favorite.article_id).where(Favorite.user_id.in_(_named_user("favorited")))
    ),
    # The feed: the viewer's followed authors.
    "followed": lambda _: Article.author_id.in_(
        select(Follow.followee_id).where(Follow.follower_id == _VIEWER)
    ),
}


# The column of a page's rows holding the list's total, after those `_views` reads.
_TOTAL = 6


@functools.lru_cache(maxsize=256)
def _list_statements(shape: _ListShape) -> tuple[Ordering, Select[Any], Select[Any]]:
    """The order, the page statement and the count statement of lists of `shape`."""
    conditions = [_FILTERS[name](shape.language) for name in shape.filters]
    ordering = article_order.ordering(
        shape.sort, searched="q" in shape.filters, language=shape.language
    )
    counted = select(func.count()).select_from(Article).where(*conditions)
    statement = _views_statement(with_viewer=shape.with_viewer, with_body=False).where(*conditions)
    if not ordering.per_row:
        # The total rides along with the page: an uncorrelated subquery, which PostgreSQL
        # runs once (an InitPlan), saves a round trip.
        statement = statement.add_columns(counted.correlate(None).scalar_subquery().label("total"))
    return ordering, keyset.windowed(statement, ordering, backward=shape.backward), counted


async def _page(
    session: AsyncSession,
    viewer: User | None,
    filters: Mapping[str, str | None],
    *,
    window: Window,
    sort: ArticleSort = NEWEST,
    language: str = "english",
) -> Page[ArticleView]:
    """The page `window` of the articles that pass `filters` (`_FILTERS` names and values)
    in the order `sort`, with `viewer`'s marks."""
    shape = _ListShape(
        filters=tuple(sorted(filters)),
        with_viewer=viewer is not None,
        sort=sort,
        language=language,
        backward=keyset.window_kind(window),
    )
    # Built once per shape: SQLAlchemy then computes their cache keys once too.
    ordering, statement, counted = _list_statements(shape)
    parameters = dict(filters) | _viewer_parameters(viewer)
    total = None
    if ordering.per_row:
        # The order's keys are computed per row: count first, refuse too long a list unread.
        total = await session.scalar(counted, parameters) or 0
        article_order.check_rankable(total)
    parameters |= keyset.parameters(ordering, window)
    rows = (await session.execute(statement, parameters)).all()
    page, edges = keyset.cut(rows, ordering, window)
    if total is None:
        # Only a page past the end has no row to carry the total.
        total = rows[0][_TOTAL] if rows else await session.scalar(counted, parameters) or 0
    return Page(items=await _views(session, viewer, page), total=total, edges=edges)


async def list_articles(
    *,
    session: AsyncSession,
    viewer: User | None,
    limit: int,
    offset: int,
    tag: str | None = None,
    author: str | None = None,
    favorited: str | None = None,
    q: str | None = None,
    sort: ArticleSort | None = None,
    position: Position | None = None,
    language: str = "english",
) -> Page[ArticleView]:
    """Filtered by tag, author, favoriting user and/or the search `q` (filters combine), in
    the `sort` order, newest first by default (`InvalidInput` for relevance without `q`, or
    over more matches than `article_order.RANK_MAX`).

    A `position` (from a previous page's edges, in the same order) starts the page there
    instead of at `offset`; `InvalidInput` when it does not fit the order.
    """
    given = {"q": q or None, "tag": tag, "author": author, "favorited": favorited}
    filters = {name: value for name, value in given.items() if value is not None}
    window = Window(limit=limit, offset=offset, position=position)
    sort_name = article_order.sort_name(sort)
    return await _page(session, viewer, filters, window=window, sort=sort_name, language=language)


async def feed(
    *,
    session: AsyncSession,
    viewer: User,
    limit: int,
    offset: int,
    position: Position | None = None,
) -> Page[ArticleView]:
    """Articles by the authors `viewer` follows, newest first (from `position` if given)."""
    window = Window(limit=limit, offset=offset, position=position)
    return await _page(session, viewer, {"followed": None}, window=window)


async def get_article(*, session: AsyncSession, viewer: User | None, slug: str) -> ArticleView:
    """The article with `slug`, or `NotFound`."""
    return await _one(session, viewer, slug)


_FAVORITED = (
    select(func.array_agg(Favorite.article_id))
    .where(Favorite.user_id == User.id, Favorite.article_id == any_ids("favorite_article_ids"))
    .scalar_subquery()
)


def favorited_column(article_ids: Collection[int]) -> sessions.ViewerColumn:
    """Which of `article_ids` the viewer favorited (an array, NULL for none): the viewer's
    part of answers whose shared part may come from the cache, read with the viewer
    (`sessions.viewer`)."""
    return _FAVORITED, {"favorite_article_ids": sorted(article_ids)}


async def find_article_id(*, session: AsyncSession, slug: str) -> int:
    """The id of the article with `slug`, or `NotFound`."""
    found = None
    if storable(slug):
        found = await session.scalar(select(Article.id).where(Article.slug == slug))
    if found is None:
        raise NotFound("article not found", field="article")
    return found


async def _insert_with_unique_slug(
    session: AsyncSession, author: User, data: ArticleCreate
) -> Article:
    values = {
        "title": data.title,
        "description": data.description,
        "body": data.body,
        "author_id": author.id,
    }
    for slug in slugs.candidates(slugs.slugify(data.title)):
        try:
            async with session.begin_nested():
                statement = insert(Article).values(slug=slug, **values).returning(Article)
                return (await session.scalars(statement)).one()
        except IntegrityError as exc:
            if _constraint_name(exc) != SLUG_CONSTRAINT:
                raise
    raise Conflict("could not find a free slug for this title, try again", field="title")


def _constraint_name(exc: IntegrityError) -> str | None:
    # asyncpg's exception (the DBAPI error's cause) names the violated constraint.
    cause = getattr(exc.orig, "__cause__", None)
    name = getattr(cause, "constraint_name", None)
    return name if isinstance(name, str) else None


async def _attach_tags(session: AsyncSession, article_id: int, names: Sequence[str]) -> None:
    if not names:
        return
    # One order for every writer: concurrent inserts of the same tags wait, never deadlock.
    ordered = sorted(set(names))
    await session.execute(
        pg_insert(Tag)
        .values([{"name": name} for name in ordered])
        .on_conflict_do_nothing(index_elements=[Tag.name])
    )
    # A separate statement: in READ COMMITTED it sees tags another transaction just committed.
    await session.execute(
        insert(ArticleTag).from_select(
            ["article_id", "tag_id"],
            select(literal(article_id, BigInteger), Tag.id).where(Tag.name.in_(ordered)),
        )
    )


async def create_article(
    *, session: AsyncSession, author: User, data: ArticleCreate
) -> ArticleView:
    """Insert an article by `author` with a unique slug derived from its title."""
    article = await _insert_with_unique_slug(session, author, data)
    await _attach_tags(session, article.id, data.tag_list)
    view = ArticleView(
        article=article,
        author=author,
        tags=sort_tags(data.tag_list),
        favorited=False,
        favorites_count=0,
        following=False,
    )
    generations.note_changed(session, generations.ARTICLES, generations.TAGS)
    await _emit(session, events.ARTICLE_CREATED, view)
    return view


async def _emit(session: AsyncSession, event_type: str, view: ArticleView) -> None:
    # Articles are public: every subscriber may see them.
    await outbox.emit(
        session=session,
        event_type=event_type,
        data=catalogue.article_view_data(view),
        audience=None,
    )


async def _owned_for_change(session: AsyncSession, viewer: User, slug: str) -> Article:
    """Lock the article with `slug` for a change by its author; `NotFound` or `PermissionDenied`."""
    article = None
    if storable(slug):
        article = await session.scalar(
            select(Article)
            .where(Article.slug == slug)
            .options(defer(Article.body))
            .with_for_update()
        )
    if article is None:
        raise NotFound("article not found", field="article")
    if article.author_id != viewer.id:
        raise PermissionDenied("only the author may change this article", field="article")
    return article


async def update_article(
    *, session: AsyncSession, viewer: User, slug: str, data: ArticleUpdate
) -> ArticleView:
    """Change the given fields (and the tags, if given) of the viewer's own article.

    The slug stays as it was, even when the title changes, so existing links keep working.
    """
    article = await _owned_for_change(session, viewer, slug)
    changes = data.model_dump(exclude_unset=True)
    tag_list: list[str] | None = changes.pop("tag_list", None)
    if changes or tag_list is not None:
        await session.execute(
            update(Article)
            .where(Article.id == article.id)
            .values(**changes, updated_at=func.now())
            .execution_options(synchronize_session=False)
        )
    if tag_list is not None:
        await session.execute(delete(ArticleTag).where(ArticleTag.article_id == article.id))
        await _attach_tags(session, article.id, tag_list)
    view = await _one(session, viewer, slug)
    generations.note_changed(session, generations.ARTICLES, generations.TAGS)
    await _emit(session, events.ARTICLE_UPDATED, view)
    return view


async def delete_article(*, session: AsyncSession, viewer: User, slug: str) -> None:
    """Delete an article with its comments, tag links and favorites.

    Its author may; so may a moderator or admin, and then the deletion is audited.
    """
    row = None
    if storable(slug):
        row = (
            await session.execute(
                select(Article.id, Article.author_id, Article.title, User.username)
                .join(User, User.id == Article.author_id)
                .where(Article.slug == slug)
                .with_for_update(of=Article)
            )
        ).one_or_none()
    if row is None:
        raise NotFound("article not found", field="article")
    article_id, author_id, title, author_name = row
    if author_id != viewer.id:
        if not admin.may_moderate(viewer):
            raise PermissionDenied("only the author may change this article", field="article")
        await audit.record(
            session=session,
            actor=viewer,
            action="article.delete",
            target_type="article",
            target_id=slug,
            details={"author": author_name, "title": title},
        )
    # The event reports the article as it was.
    await _emit(session, events.ARTICLE_DELETED, await _one(session, viewer, slug))
    generations.note_changed(session, generations.ARTICLES, generations.TAGS, generations.COMMENTS)
    await session.execute(
        delete(Article).where(Article.id == article_id).execution_options(synchronize_session=False)
    )


async def favorite(*, session: AsyncSession, viewer: User, slug: str) -> ArticleView:
    """Mark the article favorited by `viewer` (idempotent)."""
    added = None
    if storable(slug):
        added = await session.scalar(
            pg_insert(Favorite)
            .from_select(
                ["user_id", "article_id"],
                # Key-share lock: a concurrent delete of the article cannot break the FK.
                select(literal(viewer.id, BigInteger), Article.id)
                .where(Article.slug == slug)
                .with_for_update(key_share=True),
            )
            .on_conflict_do_nothing()
            .returning(Favorite.article_id)
        )
    event_type = events.ARTICLE_FAVORITED if added is not None else None
    return await _favorites_changed(session, viewer, slug, event_type)


async def _favorites_changed(
    session: AsyncSession, viewer: User, slug: str, event_type: str | None
) -> ArticleView:
    """The article as `viewer` now sees it; with `event_type` (the favorite was added or
    removed), the cached answers are stale and the webhooks are told."""
    view = await _one(session, viewer, slug)
    if event_type is None:
        return view
    generations.note_changed(session, generations.ARTICLES)
    # Who favorited what is public (`GET /articles?favorited=<username>`): every subscribed
    # endpoint hears of it, as the event catalogue says.
    await outbox.emit(
        session=session,
        event_type=event_type,
        data=catalogue.favorite_data(
            article_slug=view.article.slug, favorites_count=view.favorites_count, user=viewer
        ),
        audience=None,
    )
    return view


async def unfavorite(*, session: AsyncSession, viewer: User, slug: str) -> ArticleView:
    """Remove `viewer`'s favorite of the article (idempotent)."""
    removed = None
    if storable(slug):
        removed = await session.scalar(
            delete(Favorite)
            .where(
                Favorite.user_id == viewer.id,
                Favorite.article_id.in_(select(Article.id).where(Article.slug == slug)),
            )
            .returning(Favorite.article_id)
        )
    event_type = events.ARTICLE_UNFAVORITED if removed is not None else None
    return await _favorites_changed(session, viewer, slug, event_type)
