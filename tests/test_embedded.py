"""The embedded redis-server supervisor: start, stop, files, persistence, death with its parent."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_fixtures import short_dir

from procmond.embedded import EmbeddedRedisError, RedisServer, find_server_binary, free_port

pytestmark = pytest.mark.redis

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def directory() -> Iterator[Path]:
    base = short_dir("pmd-emb-")
    yield base / "r"
    subprocess.run(["rm", "-rf", str(base)], check=False)


def _ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    finally:
        client.close()


def _gone(pid: int) -> bool:
    """True when the pid no longer exists or is a zombie nobody has reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return _gone(pid)


def test_start_serves_on_a_unix_socket_and_stop_ends_it(directory: Path) -> None:
    """start() returns a unix:// URL answering PING; stop() ends the process, idempotently."""
    server = RedisServer(directory, persistent=False)
    url = server.start()
    assert url == f"unix://{directory / 'redis.sock'}" == server.url
    assert _ping(url)
    pid = server.pid
    server.stop()
    assert _wait_gone(pid, 5)
    server.stop()
    with pytest.raises(EmbeddedRedisError):
        _ = server.pid


def test_url_file_written_on_start_and_removed_on_stop(directory: Path) -> None:
    """redis.url holds the URL while the server runs, for other tools."""
    with RedisServer(directory, persistent=False) as server:
        assert (directory / "redis.url").read_text().strip() == server.url
        assert (directory / "redis.log").exists()
    assert not (directory / "redis.url").exists()


def test_directory_is_private(directory: Path) -> None:
    """The data directory is 0700, also when it existed with wider permissions."""
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    with RedisServer(directory, persistent=False):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_tcp_port_mode_has_no_unix_socket(directory: Path) -> None:
    """With port= the server listens on 127.0.0.1:port only."""
    port = free_port()
    with RedisServer(directory, persistent=False, port=port) as server:
        assert server.url == f"redis://127.0.0.1:{port}"
        assert _ping(server.url)
        assert not (directory / "redis.sock").exists()


def test_persistent_data_survives_restart(directory: Path) -> None:
    """With persistent=True (AOF) a stream entry is still there after restart()."""
    with RedisServer(directory, persistent=True) as server:
        client = redis.Redis.from_url(server.url)
        entry_id = client.xadd("events.process.start", {"seq": "1"})
        client.close()
        url = server.restart()
        assert url == server.url
        client = redis.Redis.from_url(url)
        entries: Any = client.xrange("events.process.start")  # redis-py types it as Optional
        assert [e[0] for e in entries] == [entry_id]
        client.close()


def test_non_persistent_restart_starts_empty(directory: Path) -> None:
    """With persistent=False nothing is kept across a restart."""
    with RedisServer(directory, persistent=False) as server:
        client = redis.Redis.from_url(server.url)
        client.xadd("s", {"f": "v"})
        client.close()
        server.restart()
        client = redis.Redis.from_url(server.url)
        assert client.xlen("s") == 0
        client.close()


def test_pause_freezes_and_resume_thaws(directory: Path) -> None:
    """pause() makes the server silent (PING times out); resume() brings it back."""
    with RedisServer(directory, persistent=False) as server:
        server.pause()
        try:
            with pytest.raises(redis.TimeoutError):
                _ping(server.url)
        finally:
            server.resume()
        assert _ping(server.url)


def test_stop_of_a_paused_server_does_not_hang(directory: Path) -> None:
    """stop() wakes a paused server so SIGTERM takes effect without waiting for SIGKILL."""
    server = RedisServer(directory, persistent=False)
    server.start()
    pid = server.pid
    server.pause()
    started = time.monotonic()
    server.stop(timeout=5)
    assert _wait_gone(pid, 1)
    assert time.monotonic() - started < 5


def test_kill_removes_url_file(directory: Path) -> None:
    """kill() SIGKILLs the server at once and forgets it."""
    server = RedisServer(directory, persistent=False)
    server.start()
    pid = server.pid
    server.kill()
    assert _wait_gone(pid, 5)
    assert not (directory / "redis.url").exists()


def test_bad_argument_fails_fast_with_the_log(directory: Path) -> None:
    """A server exiting while starting raises EmbeddedRedisError at once, with its log."""
    server = RedisServer(directory, persistent=False, extra_args=("--no-such-option", "1"))
    started = time.monotonic()
    with pytest.raises(EmbeddedRedisError, match="exited"):
        server.start(timeout=10)
    assert time.monotonic() - started < 5


def test_missing_binary_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-server on PATH the error tells how to install it."""
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EmbeddedRedisError, match="apt-get install redis-server"):
        find_server_binary()


def test_socket_path_too_long_is_refused(tmp_path: Path) -> None:
    """A unix socket path past the kernel's limit is refused with a clear message."""
    server = RedisServer(tmp_path / ("x" * 120), persistent=False)
    with pytest.raises(EmbeddedRedisError, match="too long"):
        server.start()


def test_child_dies_when_parent_is_sigkilled(directory: Path) -> None:
    """PR_SET_PDEATHSIG: SIGKILL of the supervising process takes redis-server down too."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from procmond.embedded import RedisServer
        server = RedisServer(Path({str(directory)!r}), persistent=False)
        server.start()
        print(server.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=REPO, text=True
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        child = int(line)
        assert not _gone(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
        assert _wait_gone(child, 5), "redis-server outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
