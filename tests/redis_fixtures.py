"""Private ``redis-server`` processes for the tests (never the machine's 127.0.0.1:6379).

``redis_server`` is one server for the whole session (tests sharing it use
unique channel and key names, see :func:`unique_name`); ``fresh_redis`` is a
new empty server per test, which the test may stop, restart, pause or
reconfigure; ``persistent_redis`` is a new server with AOF on, so a test can
stop and start it and find its streams again. Each listens on a unix socket
only, inside a private temporary directory, and is stopped (and its socket
removed) when its scope ends.

A missing ``redis-server`` FAILS the test with the install hint rather than
skipping it: ``make test`` installs it, so a skip would only hide a broken
setup and silently drop every integration test.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from procmond.embedded import EmbeddedRedisError, RedisServer, find_server_binary

__all__ = [
    "fresh_redis",
    "persistent_redis",
    "redis_server",
    "running_redis",
    "short_dir",
    "unique_name",
]


def short_dir(prefix: str = "pmd-redis-") -> Path:
    """A short private directory: a unix socket path must stay under 108 bytes.

    pytest's ``tmp_path`` can pass that limit with a long test name.
    """
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def unique_name(prefix: str = "t") -> str:
    """A channel or key name that no other test of the session uses."""
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


@contextmanager
def running_redis(
    *,
    persistent: bool = False,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    prefix: str = "pmd-redis-",
) -> Iterator[RedisServer]:
    """Start a private server in a new short directory; stop it and remove the directory after.

    ``extra_args`` go to redis-server as they are (AOF fsync policy, a TLS port).
    """
    try:
        binary = find_server_binary()
    except EmbeddedRedisError as exc:
        pytest.fail(str(exc), pytrace=False)
    directory = short_dir(prefix)
    server = RedisServer(
        directory / "r", persistent=persistent, port=port, binary=binary, extra_args=extra_args
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server for the session (tests sharing it use their own names)."""
    with running_redis() as server:
        yield server


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """An empty server of this test's own, persistence off, for fault tests."""
    with running_redis() as server:
        yield server


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    """A server with AOF on: ``restart()`` keeps the streams."""
    with running_redis(persistent=True) as server:
        yield server
