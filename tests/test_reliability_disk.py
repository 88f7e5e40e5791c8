"""The write-ahead log on a real file system that fills up or turns read-only (issue 5, fault 7).

The log directory is a small tmpfs mounted for the test, so the daemon meets
the kernel's own ``ENOSPC`` and ``EROFS``, not a size cap of ours. Mounting
needs root (CAP_SYS_ADMIN), which CI has; elsewhere the tests skip and say why.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from contract_agent import seq_report
from e2e_support import daemon, new_id, poll, running_agent, started
from redis.asyncio import Redis
from reliability_support import Requests, blocked_children, record, release

from procmond.embedded import RedisServer
from procmond.errors import EXIT_CANNOT_START

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (0700) for the block; skips without root."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    """Change a mounted tmpfs's options (``ro``, ``rw``, ``size=...``)."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def log_reasons(health: dict[str, Any]) -> list[str]:
    return [r for r in health["reasons"] if "write-ahead log" in r]


async def unhealthy_because_of_the_log(calls: Requests, cid: str) -> tuple[dict[str, Any], str]:
    """Wait (bounded) for HealthCheck to say Unhealthy because of the log; (health, reason)."""
    health = await poll(
        lambda: calls.health(cid),
        lambda h: h["status"] == "Unhealthy" and bool(log_reasons(h)),
        timeout=30,
        every=0.2,
    )
    return health, log_reasons(health)[0]


def started_with(entries: list[dict[str, Any]], marker: str) -> int:
    return len(started(entries, marker))


async def test_write_ahead_log_on_a_full_disk_is_unhealthy_then_recovers(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """The log's file system fills (ENOSPC) while Redis refuses XADDs: health is
    Unhealthy naming the log and the kernel's error, the daemon keeps running and
    holds what it saw; when the disk grows and Redis takes XADDs again, every held
    event goes out with no seq gap and health returns to Healthy."""
    cid = new_id("df")
    data_dir = tmp_path / "data"
    redis = Redis.from_url(fresh_redis.url)
    marker = f"diskfull-{cid}"
    try:
        with tmpfs(data_dir / "wal", "256k") as wal_mount:
            async with running_agent(fresh_redis.url) as agent:
                calls = Requests(agent)
                with daemon(tmp_path, fresh_redis.url, cid) as proc:
                    await agent.wait_for_state(cid, "ready", timeout=15)
                    await calls.caught_up(cid)
                    await redis.config_set("maxmemory", "1")  # every XADD refused (OOM)
                    big = blocked_children(marker, 12, "x" * 60_000)  # ~720 kB of events
                    try:
                        _, reason = await unhealthy_because_of_the_log(calls, cid)
                        assert "No space left on device" in reason, reason
                        assert proc.returncode is None
                        remount(wal_mount, "size=64m")
                        await redis.config_set("maxmemory", "0")
                        await calls.caught_up(cid, timeout=60)
                        entries = await agent.read_events(cid)
                    finally:
                        release(big)
                    health = await calls.health(cid)
                    assert health["status"] == "Healthy", health
                    assert health["pid"] == proc.pid
                    lines = [r for r in proc.log_records() if "write-ahead log" in r["message"]]
                    await calls.shutdown(cid)
                    assert await proc.wait_async(20) == 0
    finally:
        await redis.aclose()
    report = seq_report(entries)
    assert report.first == 1
    assert report.missing == []
    assert started_with(entries, marker) == 12
    record(
        "wal-disk-full",
        injected=1,
        tmpfs="256k",
        unhealthy_reason=reason,
        big_children=12,
        big_children_reported=started_with(entries, marker),
        log_lines=[r["message"] for r in lines],
        events=report.distinct,
        lost=report.lost,
        duplicates=report.duplicates,
        requests_sent=calls.sent,
        requests_answered=calls.answered,
    )


@contextmanager
def ext4(path: Path, image: Path, size_mb: int = 32) -> Iterator[Path]:
    """A fresh ext4 on a loop device at ``path``, ``errors=remount-ro``; skips without root."""
    with image.open("wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    options = "loop,errors=remount-ro"
    mounted = subprocess.run(
        ["mount", "-o", options, str(image), str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop device here (needs root): {mounted.stderr.strip()}")
    path.chmod(0o700)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fail_file_system(path: Path) -> None:
    """Make ext4 at ``path`` hit an error: the kernel remounts it read-only at once,
    as it does on a real disk error (every open file then fails with EROFS)."""
    device = Path(
        subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(path)], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    (Path("/sys/fs/ext4") / device.name / "trigger_fs_error").write_text("procmond test\n")


def repair(path: Path, image: Path) -> None:
    """What an operator does: unmount, fsck, mount again."""
    subprocess.run(["umount", str(path)], check=True)
    subprocess.run(["e2fsck", "-f", "-y", str(image)], capture_output=True, check=False)
    subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(path)], check=True)


async def test_write_ahead_log_on_a_file_system_gone_read_only(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """The log's ext4 hits an error and the kernel remounts it read-only (EROFS on
    every open file) mid-run: no crash and no crash loop; health Unhealthy naming the
    log and the error; requests still answered; GracefulShutdown still exits. After
    the operator's repair (umount, fsck, mount) a restart replays the log and its
    baseline reports the processes started meanwhile; seq has no gap across boots."""
    cid = new_id("ro")
    data_dir = tmp_path / "data"
    image = tmp_path / "wal.ext4"
    marker = f"readonly-{cid}"
    held: list[subprocess.Popen[bytes]] = []
    with ext4(data_dir / "wal", image) as wal_mount:
        async with running_agent(fresh_redis.url) as agent:
            calls = Requests(agent)
            try:
                with daemon(tmp_path, fresh_redis.url, cid) as proc:
                    await agent.wait_for_state(cid, "ready", timeout=15)
                    await calls.caught_up(cid)
                    fail_file_system(wal_mount)
                    held = blocked_children(marker, 5)
                    stuck, reason = await unhealthy_because_of_the_log(calls, cid)
                    assert "Read-only file system" in reason, reason
                    # Still alive and answering, cycle after cycle.
                    errors = stuck["metrics"]["collection_errors"]
                    later = await poll(
                        lambda: calls.health(cid),
                        lambda h: h["metrics"]["collection_errors"] >= errors + 2,
                        timeout=15,
                    )
                    assert later["status"] == "Unhealthy"
                    assert later["pid"] == proc.pid
                    shutdown = await calls.call(
                        cid, "GracefulShutdown", {"reason": "disk failed"}, timeout=20
                    )
                    first_exit = await proc.wait_async(20)
                    first_log = [r["message"] for r in proc.log_records() if r["level"] != "info"]
                repair(wal_mount, image)
                with daemon(tmp_path, fresh_redis.url, cid) as again:
                    await agent.wait_for_state(cid, "ready", count=2, timeout=15)
                    await calls.caught_up(cid)
                    entries = await agent.read_events(cid)
                    health = await calls.health(cid)
                    await calls.shutdown(cid)
                    assert await again.wait_async(20) == 0
            finally:
                release(held)
    assert shutdown["status"] == "Success", shutdown
    assert first_exit == 0, first_log
    assert health["status"] == "Healthy", health
    report = seq_report(entries)
    assert report.first == 1
    assert report.missing == []
    baseline = [
        e
        for e in entries
        if e["stream"] == "events.process.start"
        and marker in (e["event"].get("cmdline") or [])
        and e["event"].get("baseline")
    ]
    assert len(baseline) == 5, baseline
    record(
        "wal-read-only",
        injected=1,
        unhealthy_reason=reason,
        shutdown_result=shutdown["payload"],
        warnings=first_log,
        events=report.distinct,
        lost=report.lost,
        duplicates=report.duplicates,
        requests_sent=calls.sent,
        requests_answered=calls.answered,
    )


def test_start_on_a_read_only_data_directory_fails_clearly(tmp_path: Path) -> None:
    """A data directory on a read-only file system stops start-up at once with one line
    naming the path and the error, and exit 3 (cannot start): no traceback, no retry loop."""
    mount = tmp_path / "ro"
    with tmpfs(mount, "1m"):
        (mount / "data").mkdir()
        remount(mount, "ro")
        for data_dir, expected in (
            (mount / "data", f"write-ahead log {mount / 'data' / 'wal' / 'ro1'}: Read-only"),
            (mount / "new", f"cannot create data directory {mount / 'new'}: Read-only"),
        ):
            done = subprocess.run(
                [
                    sys.executable, "-m", "procmond.cli", "run",
                    "--redis-url", "redis://127.0.0.1:1", "--collector-id", "ro1",
                    "--data-dir", str(data_dir),
                ],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert done.returncode == EXIT_CANNOT_START, done.stderr
            assert expected in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
