"""webhook retention: messages by age

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 09:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The retention job deletes the oldest messages in batches: by age, across endpoints.
    op.create_index(
        "ix_webhook_messages_created_at", "webhook_messages", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_messages_created_at", table_name="webhook_messages")
