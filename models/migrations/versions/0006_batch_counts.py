"""per-batch counts kept by triggers, indexes for status and the sweeper (issue 13 item 5)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

``batch_counts(batch_id, model, lane, status) → n, cost_usd, standard_cost_usd`` is what ``status``, ``watch``, the metrics and
``Client.status`` read instead of a GROUP BY over every task of a batch (docs/architecture.md,
*Counts*). Database triggers keep it, so every code path that writes ``generation_tasks`` — the
worker's Core statements, the sweeper's bulk UPDATEs, COPY-based submit, regenerate, a cascaded batch
delete, raw SQL typed by an operator — is counted without the code knowing:

- PostgreSQL: statement-level AFTER triggers with transition tables append one aggregated row per
  (batch, model, status) a statement changed to ``batch_count_deltas`` (an insert-only log: no row
  lock, so 50 worker threads finishing tasks of one batch never queue on a hot counter row, and no
  deadlock between a bulk cancel and a claim). The sweeper folds the log into ``batch_counts``
  (``models/counts.compact``); readers add both, in one statement, so they are exact at any time.
- SQLite (one writer at a time anyway): row-level triggers update ``batch_counts`` directly.

The upgrade backfills the counts of existing rows inside the migration's transaction (the trigger
DDL locks ``generation_tasks`` against writes until it commits, so nothing is counted twice or
missed). Downgrade drops the triggers, both tables and the indexes, and restores the 0003 index.
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_PG_FUNCTION = """
CREATE FUNCTION nanobatch_count_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO batch_count_deltas (batch_id, model, lane, status, n, cost_usd, standard_cost_usd)
        SELECT batch_id, model, lane, status, count(*), coalesce(sum(cost_usd), 0),
               coalesce(sum(coalesce(standard_cost_usd, cost_usd)), 0)
        FROM new_rows GROUP BY batch_id, model, lane, status;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO batch_count_deltas (batch_id, model, lane, status, n, cost_usd, standard_cost_usd)
        SELECT batch_id, model, lane, status, -count(*), -coalesce(sum(cost_usd), 0),
               -coalesce(sum(coalesce(standard_cost_usd, cost_usd)), 0)
        FROM old_rows GROUP BY batch_id, model, lane, status;
    ELSE
        INSERT INTO batch_count_deltas (batch_id, model, lane, status, n, cost_usd, standard_cost_usd)
        SELECT batch_id, model, lane, status, sum(n), sum(cost_usd), sum(standard_cost_usd)
        FROM (
            SELECT batch_id, model, lane, status, 1 AS n, coalesce(cost_usd, 0) AS cost_usd,
                   coalesce(standard_cost_usd, cost_usd, 0) AS standard_cost_usd FROM new_rows
            UNION ALL
            SELECT batch_id, model, lane, status, -1, -coalesce(cost_usd, 0),
                   -coalesce(standard_cost_usd, cost_usd, 0) FROM old_rows
        ) AS moved
        GROUP BY batch_id, model, lane, status
        HAVING sum(n) <> 0 OR sum(cost_usd) <> 0 OR sum(standard_cost_usd) <> 0;
    END IF;
    RETURN NULL;
END
$$
"""
_PG_TRIGGERS = (
    "CREATE TRIGGER generation_tasks_count_insert AFTER INSERT ON generation_tasks "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION nanobatch_count_tasks()",
    "CREATE TRIGGER generation_tasks_count_update AFTER UPDATE ON generation_tasks "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION nanobatch_count_tasks()",
    "CREATE TRIGGER generation_tasks_count_delete AFTER DELETE ON generation_tasks "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION nanobatch_count_tasks()",
)

_SQLITE_ADD_NEW = """
    INSERT INTO batch_counts (batch_id, model, lane, status, n, cost_usd, standard_cost_usd)
    VALUES (NEW.batch_id, NEW.model, NEW.lane, NEW.status, 1, coalesce(NEW.cost_usd, 0),
            coalesce(NEW.standard_cost_usd, NEW.cost_usd, 0))
    ON CONFLICT (batch_id, model, lane, status)
    DO UPDATE SET n = n + 1, cost_usd = cost_usd + excluded.cost_usd,
                  standard_cost_usd = standard_cost_usd + excluded.standard_cost_usd;
"""
_SQLITE_REMOVE_OLD = """
    UPDATE batch_counts SET n = n - 1, cost_usd = cost_usd - coalesce(OLD.cost_usd, 0),
        standard_cost_usd = standard_cost_usd - coalesce(OLD.standard_cost_usd, OLD.cost_usd, 0)
    WHERE batch_id = OLD.batch_id AND model = OLD.model AND lane = OLD.lane AND status = OLD.status;
"""
_SQLITE_TRIGGERS = (
    f"CREATE TRIGGER generation_tasks_count_insert AFTER INSERT ON generation_tasks BEGIN {_SQLITE_ADD_NEW} END",
    "CREATE TRIGGER generation_tasks_count_update "
    "AFTER UPDATE OF batch_id, model, lane, status, cost_usd, standard_cost_usd "
    "ON generation_tasks WHEN OLD.batch_id IS NOT NEW.batch_id OR OLD.model IS NOT NEW.model "
    "OR OLD.lane IS NOT NEW.lane OR OLD.status IS NOT NEW.status OR OLD.cost_usd IS NOT NEW.cost_usd "
    "OR OLD.standard_cost_usd IS NOT NEW.standard_cost_usd "
    f"BEGIN {_SQLITE_REMOVE_OLD} {_SQLITE_ADD_NEW} END",
    f"CREATE TRIGGER generation_tasks_count_delete AFTER DELETE ON generation_tasks BEGIN {_SQLITE_REMOVE_OLD} END",
)
_TRIGGER_NAMES = ("generation_tasks_count_insert", "generation_tasks_count_update", "generation_tasks_count_delete")

_BACKFILL = """
INSERT INTO batch_counts (batch_id, model, lane, status, n, cost_usd, standard_cost_usd)
SELECT batch_id, model, lane, status, count(*), coalesce(sum(cost_usd), 0),
       coalesce(sum(coalesce(standard_cost_usd, cost_usd)), 0)
FROM generation_tasks GROUP BY batch_id, model, lane, status
"""

_PENDING_WITH_CODE = sa.text("status = 'pending' AND error_code IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        'batch_counts',
        sa.Column('batch_id', sa.String(36), nullable=False),
        sa.Column('model', sa.String(100), nullable=False),
        sa.Column('lane', sa.String(16), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False, server_default='0'),
        sa.Column('cost_usd', sa.Float(), nullable=False, server_default='0'),
        sa.Column('standard_cost_usd', sa.Float(), nullable=False, server_default='0'),
        sa.PrimaryKeyConstraint('batch_id', 'model', 'lane', 'status', name='pk_batch_counts'),
    )
    op.create_table(
        'batch_count_deltas',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('batch_id', sa.String(36), nullable=False),
        sa.Column('model', sa.String(100), nullable=False),
        sa.Column('lane', sa.String(16), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.Column('cost_usd', sa.Float(), nullable=False),
        sa.Column('standard_cost_usd', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_batch_count_deltas'),
    )
    op.create_index('ix_batch_count_deltas_batch_id', 'batch_count_deltas', ['batch_id'])
    # status's completions/min reads the batch's recent completions only; the budget and alert reads
    # of pending rows walk a small partial index, not every pending row.
    op.drop_index('ix_generation_tasks_batch_status', table_name='generation_tasks')
    op.create_index(
        'ix_generation_tasks_batch_status_finished', 'generation_tasks', ['batch_id', 'status', 'finished_at']
    )
    op.create_index(
        'ix_generation_tasks_pending_code',
        'generation_tasks',
        ['batch_id', 'status', 'error_code'],  # status: SQLite's planner then prefers it (3 equalities)
        postgresql_where=_PENDING_WITH_CODE,
        sqlite_where=_PENDING_WITH_CODE,
    )
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(_PG_FUNCTION)
        for statement in _PG_TRIGGERS:
            op.execute(statement)
    else:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)
    op.execute(_BACKFILL)


def downgrade() -> None:
    for name in _TRIGGER_NAMES:
        op.execute(f'DROP TRIGGER IF EXISTS {name}' + (' ON generation_tasks' if _is_pg() else ''))
    if _is_pg():
        op.execute('DROP FUNCTION IF EXISTS nanobatch_count_tasks()')
    op.drop_index('ix_generation_tasks_pending_code', table_name='generation_tasks')
    op.drop_index('ix_generation_tasks_batch_status_finished', table_name='generation_tasks')
    op.create_index('ix_generation_tasks_batch_status', 'generation_tasks', ['batch_id', 'status'])
    op.drop_index('ix_batch_count_deltas_batch_id', table_name='batch_count_deltas')
    op.drop_table('batch_count_deltas')
    op.drop_table('batch_counts')


def _is_pg() -> bool:
    return op.get_bind().dialect.name == 'postgresql'
