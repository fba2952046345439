"""Engine and session factory, and schema upgrades through Alembic.

One :class:`Database` per process (Celery: created lazily in the worker process, never inherited
across a fork). SQLite gets WAL and a busy timeout so the embedded default tolerates a worker and a
CLI writing at once; PostgreSQL gets a pre-ping pool so a database restart costs a retry, not a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _idle_transaction_limit(seconds: float) -> Callable[[Any, Any], None]:
    """A connect hook: PostgreSQL ends this session's transaction once it idles ``seconds``.

    Why: a worker process paused mid-transaction (SIGSTOP, a long GC, a VM freeze) keeps its row
    locks while its TCP connection stays open, and every other worker that updates those rows (the
    dispatcher stamping the next rows, a reclaim) waits for it: the whole pool stalls until the
    paused process wakes. With the limit the server rolls the transaction back and frees the locks;
    the paused process finds its connection gone when it wakes, and its write fails like any other
    lost connection (retried, then refused by the claim token if its task was reclaimed).
    ``SET`` rather than a startup ``options`` parameter, which transaction-pooling PgBouncer refuses.
    """
    milliseconds = max(1, round(seconds * 1000))

    def hook(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True  # no transaction left open by the SET itself
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET idle_in_transaction_session_timeout = {milliseconds}")
        cursor.close()
        dbapi_connection.autocommit = autocommit

    return hook


def make_engine(url: str, *, pool_size: int = 10, idle_transaction_limit: float | None = None) -> Engine:
    """An engine tuned for the backend the URL names; ``idle_transaction_limit`` (seconds, PostgreSQL
    only) ends a transaction left idle that long (:func:`_idle_transaction_limit`)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size)
    if idle_transaction_limit:
        event.listen(engine, "connect", _idle_transaction_limit(idle_transaction_limit))
    return engine


class Database:
    """An engine plus a session factory; ``with db.session() as s:`` commits or rolls back.

    The worker's per-task writes are Core statements (:mod:`models.transitions`) and skip the ORM
    session: :meth:`transaction` is a plain connection in a transaction, :meth:`autocommit` one on
    which each statement commits by itself (for a write that is one statement: no ``BEGIN`` and
    ``COMMIT`` round trips).
    """

    def __init__(self, url: str, *, pool_size: int = 10, idle_transaction_limit: float | None = None) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size, idle_transaction_limit=idle_transaction_limit)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._autocommit_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection in a transaction: committed when the block ends, rolled back if it raises."""
        with self.engine.begin() as connection:
            yield connection

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection whose every statement is its own transaction (same pool as the engine).

        Only for writes that are a single statement: two statements run here do not commit together.
        """
        with self._autocommit_engine.connect() as connection:
            yield connection

    def upgrade(self, revision: str = "head") -> None:
        upgrade(self.engine, revision)

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config  # heavy import, only needed for migrations

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent; safe to run on every start)."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)
