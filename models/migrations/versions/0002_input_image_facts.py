"""input image facts recorded at submit (allowed root, sha256 per file)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('generation_tasks', sa.Column('input_root', sa.Text(), nullable=True))
    op.add_column('generation_tasks', sa.Column('input_sha256', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('generation_tasks') as batch:
        batch.drop_column('input_sha256')
        batch.drop_column('input_root')
