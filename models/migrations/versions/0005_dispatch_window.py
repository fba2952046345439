"""dispatch from the database: batch priority and weight, the queue's partial indexes (issue #13)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

``batches.priority`` (higher first) and ``batches.weight`` (share among equal priorities) order the
dispatcher's window. Three partial indexes make every dispatcher query an index range at any table
size (docs/architecture.md, "Dispatch"): undispatched rows per pool and batch in id order, retries
parked until ``not_before``, and rows whose message is out (the window).
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# Frozen copies of models/tables.py's predicates (tests/unit/test_migrations_match.py compares them).
QUEUED_FRESH = (
    "status = 'pending' AND dispatched_at IS NULL AND not_before IS NULL "
    "AND lane IN ('flex', 'priority', 'standard')"
)
QUEUED_LATER = (
    "status = 'pending' AND dispatched_at IS NULL AND not_before IS NOT NULL "
    "AND lane IN ('flex', 'priority', 'standard')"
)
IN_FLIGHT = "status = 'pending' AND dispatched_at IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('weight', sa.Integer(), nullable=False, server_default='1'))
    op.create_index(
        'ix_generation_tasks_queue_fresh',
        'generation_tasks',
        ['model', 'batch_id', 'id'],
        postgresql_where=sa.text(QUEUED_FRESH),
        sqlite_where=sa.text(QUEUED_FRESH),
    )
    op.create_index(
        'ix_generation_tasks_queue_later',
        'generation_tasks',
        ['not_before'],
        postgresql_where=sa.text(QUEUED_LATER),
        sqlite_where=sa.text(QUEUED_LATER),
    )
    op.create_index(
        'ix_generation_tasks_in_flight',
        'generation_tasks',
        ['model', 'dispatched_at'],
        postgresql_where=sa.text(IN_FLIGHT),
        sqlite_where=sa.text(IN_FLIGHT),
    )


def downgrade() -> None:
    op.drop_index('ix_generation_tasks_in_flight', table_name='generation_tasks')
    op.drop_index('ix_generation_tasks_queue_later', table_name='generation_tasks')
    op.drop_index('ix_generation_tasks_queue_fresh', table_name='generation_tasks')
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_column('weight')
        batch_op.drop_column('priority')
