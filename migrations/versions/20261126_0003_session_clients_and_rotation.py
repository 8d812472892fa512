"""sessions of API clients, refresh-token rotation chain

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 14:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('auth_sessions', sa.Column('client_id', sa.Uuid(), nullable=True))
    op.create_index(op.f('ix_auth_sessions_client_id'), 'auth_sessions', ['client_id'], unique=False)
    op.create_foreign_key(op.f('fk_auth_sessions_client_id_api_clients'), 'auth_sessions', 'api_clients', ['client_id'], ['id'], ondelete='SET NULL')
    op.add_column('refresh_tokens', sa.Column('replaced_by_id', sa.BigInteger(), nullable=True))
    op.create_foreign_key(op.f('fk_refresh_tokens_replaced_by_id_refresh_tokens'), 'refresh_tokens', 'refresh_tokens', ['replaced_by_id'], ['id'], ondelete='SET NULL')


def downgrade() -> None:
    op.drop_constraint(op.f('fk_refresh_tokens_replaced_by_id_refresh_tokens'), 'refresh_tokens', type_='foreignkey')
    op.drop_column('refresh_tokens', 'replaced_by_id')
    op.drop_constraint(op.f('fk_auth_sessions_client_id_api_clients'), 'auth_sessions', type_='foreignkey')
    op.drop_index(op.f('ix_auth_sessions_client_id'), table_name='auth_sessions')
    op.drop_column('auth_sessions', 'client_id')
