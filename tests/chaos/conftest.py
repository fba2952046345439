"""Private services for the chaos suite: a Redis and a PostgreSQL that the tests may kill and restart.

The shared Redis (6379) and PostgreSQL (5432) carry other test runs, so chaos never touches them.
Missing server binaries skip the suite on a laptop and fail it under ``CI=true`` (CI must not go
green by skipping what it was meant to prove), like the shared fixtures in ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.services import PrivatePostgres, PrivateRedis, ServiceUnavailable
from tests.conftest import IN_CI


def _unavailable(exc: ServiceUnavailable) -> None:
    message = f"chaos needs its own servers: {exc}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """An empty ``redis-server`` on a free loopback port, owned (and killable) by this test."""
    try:
        server = PrivateRedis(tmp_path / "redis")
    except ServiceUnavailable as exc:
        _unavailable(exc)
        raise
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A throw-away PostgreSQL cluster (``initdb`` in a temp dir) on a free loopback port."""
    try:
        server = PrivatePostgres()
    except ServiceUnavailable as exc:
        _unavailable(exc)
        raise
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()
