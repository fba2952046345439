"""lanes: a lane per batch and per task, the deadline, and the table of upstream batch jobs (issue #16)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

``batches.lane`` is what the submitter chose (``standard | flex | priority | batch | auto``) and
``batches.deadline`` when the work must be done (``--deadline``); ``generation_tasks.lane`` is the
lane a task runs in now and, once finished, the lane it ran in (never ``auto``);
``generation_tasks.standard_cost_usd`` what the same call would have cost at the standard price
(status and export show the saving). ``batch_jobs`` is the source of truth for the jobs submitted to
the Gemini Batch API; a task in one points at it with ``batch_job_id``. Existing rows are standard.
"""
from alembic import op
import sqlalchemy as sa



revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'batch_jobs',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('batch_id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=True),
        sa.Column('model', sa.String(length=100), nullable=False),
        sa.Column('lane', sa.String(length=16), nullable=False, server_default='batch'),
        sa.Column('state', sa.String(length=32), nullable=False),
        sa.Column('source', sa.String(length=8), nullable=True),
        sa.Column('input_file', sa.String(length=200), nullable=True),
        sa.Column('responses_file', sa.String(length=200), nullable=True),
        sa.Column('request_count', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('succeeded', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('failed', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('polled_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ['batch_id'], ['batches.id'], name=op.f('fk_batch_jobs_batch_id_batches'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_batch_jobs')),
    )
    op.create_index('ix_batch_jobs_state', 'batch_jobs', ['state'])
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lane', sa.String(length=16), nullable=False, server_default='standard'))
        batch_op.add_column(sa.Column('deadline', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('generation_tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lane', sa.String(length=16), nullable=False, server_default='standard'))
        batch_op.add_column(sa.Column('batch_job_id', sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column('standard_cost_usd', sa.Float(), nullable=True))
        batch_op.create_index('ix_generation_tasks_batch_job_id', ['batch_job_id'])


def downgrade() -> None:
    with op.batch_alter_table('generation_tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_generation_tasks_batch_job_id')
        batch_op.drop_column('standard_cost_usd')
        batch_op.drop_column('batch_job_id')
        batch_op.drop_column('lane')
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_column('deadline')
        batch_op.drop_column('lane')
    op.drop_index('ix_batch_jobs_state', table_name='batch_jobs')
    op.drop_table('batch_jobs')
