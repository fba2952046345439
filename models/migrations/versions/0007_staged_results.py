"""an index over completed rows still naming a staged file, for the sweeper's publish step

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

A worker records its result on its claim's staged file, then publishes it under the key's name. A
worker killed between the two (or a store outage at the second) left the row on the staged file for
good. The sweeper now publishes such rows (``tasks/publishing.py``); this partial index holds only
them, so its query stays an index range at any table size (tests/integration/test_query_plans.py).
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

# A frozen copy of models/tables.py's predicate (tests/unit/test_migrations_match.py compares them).
STAGED_RESULT = "status = 'completed' AND result_uri LIKE '%/.staged/%'"


def upgrade() -> None:
    op.create_index(
        'ix_generation_tasks_staged_result',
        'generation_tasks',
        ['finished_at'],
        postgresql_where=sa.text(STAGED_RESULT),
        sqlite_where=sa.text(STAGED_RESULT),
    )


def downgrade() -> None:
    op.drop_index('ix_generation_tasks_staged_result', table_name='generation_tasks')
