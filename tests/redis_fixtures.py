"""Private ``redis-server`` processes for the tests (never the machine's 127.0.0.1:6379).

``redis_server`` is one server for the whole session; ``fresh_redis`` is a new
empty server per test; ``persistent_redis`` is a new server with AOF on, so a
test can stop and start it and find its streams again. Each listens on a unix
socket only, inside a private temporary directory, and is stopped (and its
socket removed) when its scope ends.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from procmond.embedded import RedisServer, find_server_binary


def _short_dir(prefix: str) -> Path:
    """A short private directory: a unix socket path must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _server(persistent: bool) -> Iterator[RedisServer]:
    try:
        find_server_binary()
    except Exception as exc:  # no redis-server on this machine: skip, do not fail
        pytest.skip(str(exc))
    directory = _short_dir("pmd-redis-")
    server = RedisServer(directory / "r", persistent=persistent)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server for the session (tests sharing it use their own collector ids)."""
    yield from _server(persistent=False)


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """An empty server of this test's own, persistence off."""
    yield from _server(persistent=False)


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    """A server with AOF on: ``restart()`` keeps the streams."""
    yield from _server(persistent=True)
