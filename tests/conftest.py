"""Shared fixtures: real services on loopback, each test isolated by its own database / key prefix.

Services that are not reachable make their tests skip with the reason on a developer's laptop, but
fail under ``CI=true``: CI must never go green by skipping what it was meant to prove.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

REDIS_URL = os.environ.get("NANOBATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get(
    "NANOBATCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url.replace("+psycopg", ""))
    host = parsed.hostname or "127.0.0.1"
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise RuntimeError(f"tests only talk to loopback services, not {host}")
    try:
        with socket.create_connection((host, parsed.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, default_port: int) -> None:
    """Skip (laptop) or fail (CI) when a service the test needs is not listening."""
    if _reachable(url, default_port):
        return
    message = f"{name} is not reachable at {url}; start it or set the NANOBATCH_TEST_* URL"
    if IN_CI:
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", REDIS_URL, 6379)
    return REDIS_URL


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix unique to this test; every key under it is deleted afterwards."""
    import redis

    prefix = f"nbtest:{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    patterns = (f"{prefix}*", f"_kombu.binding.{prefix}*", f"_kombu.binding_permanent.{prefix}*")
    keys = [key for pattern in patterns for key in client.scan_iter(pattern, count=1000)]
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def _pg_template() -> Iterator[str]:
    """A migrated template database; each test clones it (fast) instead of migrating again."""
    require_service("PostgreSQL", PG_ADMIN_URL, 5432)
    from nanobatch.models.db import Database

    name = f"nbtpl_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    db = Database(_db_url(name))
    db.upgrade()
    db.dispose()
    yield name
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(_pg_template: str) -> Iterator[str]:
    """URL of a fresh, migrated PostgreSQL database for this test alone (dropped afterwards)."""
    name = f"nbt_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{_pg_template}"')
    yield _db_url(name)
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    from nanobatch.models.db import Database

    url = f"sqlite:///{tmp_path}/nanobatch.db"
    db = Database(url)
    db.upgrade()
    db.dispose()
    return url


def _db_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _admin(sql: str) -> None:
    import psycopg

    dsn = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
