"""per-task wait counters for the wait bounds (issue #12)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

``upstream_waits`` / ``upstream_wait_seconds``: the task's own 429 waits and their total seconds
(``NANOBATCH_MAX_RATE_WAITS`` / ``NANOBATCH_MAX_RATE_WAIT_SECONDS``); ``day_parks``: its parks until
the daily quota reset (``NANOBATCH_MAX_DAY_PARKS``). Existing rows start at 0.
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('generation_tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('upstream_waits', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(
            sa.Column('upstream_wait_seconds', sa.Float(), nullable=False, server_default='0')
        )
        batch_op.add_column(sa.Column('day_parks', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('generation_tasks', schema=None) as batch_op:
        batch_op.drop_column('day_parks')
        batch_op.drop_column('upstream_wait_seconds')
        batch_op.drop_column('upstream_waits')
