"""article search and sort: full-text GIN index, favorites counter, sort indexes

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-03 16:00:00.000000
"""

import os
import re
from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The index expression must be the one `service.services.search` writes, character for
# character after parsing, or the planner cannot use it: the language is a literal in both
# (SEARCH_LANGUAGE, read the same way as service.infra.settings does).
_LANGUAGE = os.environ.get("SEARCH_LANGUAGE", "english").strip().lower() or "english"
if not re.fullmatch(r"[a-z_]{1,63}", _LANGUAGE):
    raise RuntimeError(f"SEARCH_LANGUAGE {_LANGUAGE!r} is not a text search configuration name")

_COUNTER_FUNCTION = """
CREATE FUNCTION articles_count_favorites() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- One UPDATE per statement (transition tables): bulk loads (COPY) stay fast.
    IF TG_OP = 'INSERT' THEN
        UPDATE articles SET favorites_count = articles.favorites_count + added.n
        FROM (SELECT article_id, count(*) AS n FROM new_rows GROUP BY article_id) AS added
        WHERE articles.id = added.article_id;
    ELSE
        UPDATE articles SET favorites_count = articles.favorites_count - removed.n
        FROM (SELECT article_id, count(*) AS n FROM old_rows GROUP BY article_id) AS removed
        WHERE articles.id = removed.article_id;
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    # Sorting by favoritesCount needs the count in the row, indexed: a counter kept by the
    # database itself, so that every writer (the API, `conduit seed`, SQL by hand) keeps it.
    op.execute("ALTER TABLE articles ADD COLUMN favorites_count integer NOT NULL DEFAULT 0")
    op.execute(
        "UPDATE articles SET favorites_count = counted.n FROM "
        "(SELECT article_id, count(*) AS n FROM favorites GROUP BY article_id) AS counted "
        "WHERE articles.id = counted.article_id"
    )
    op.execute(_COUNTER_FUNCTION)
    op.execute(
        "CREATE TRIGGER favorites_counted_on_insert AFTER INSERT ON favorites "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION articles_count_favorites()"
    )
    op.execute(
        "CREATE TRIGGER favorites_counted_on_delete AFTER DELETE ON favorites "
        "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION articles_count_favorites()"
    )
    # Keyset pages in each sort order, either direction (a btree scans both ways).
    op.execute("CREATE INDEX ix_articles_updated_at_id ON articles (updated_at, id)")
    op.execute("CREATE INDEX ix_articles_favorites_count_id ON articles (favorites_count, id)")
    op.execute(
        "CREATE INDEX ix_articles_search ON articles USING gin "
        f"(to_tsvector('{_LANGUAGE}'::regconfig, "
        "(title::text || ' ' || description::text || ' ' || body)))"
    )
    # Keyset pages of the admin's user list: newest first, ties broken by id.
    op.execute("CREATE INDEX ix_users_created_at_id ON users (created_at, id)")


def downgrade() -> None:
    op.execute("DROP INDEX ix_users_created_at_id")
    op.execute("DROP INDEX ix_articles_search")
    op.execute("DROP INDEX ix_articles_favorites_count_id")
    op.execute("DROP INDEX ix_articles_updated_at_id")
    op.execute("DROP TRIGGER favorites_counted_on_delete ON favorites")
    op.execute("DROP TRIGGER favorites_counted_on_insert ON favorites")
    op.execute("DROP FUNCTION articles_count_favorites()")
    op.execute("ALTER TABLE articles DROP COLUMN favorites_count")
