"""Signals: a second SIGINT during a drain exits at once, and the log keeps what was not sent."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from e2e_support import churn_child, daemon, new_id, poll, running_agent, wal_contains
from reliability_support import wal_bytes

from procmond.embedded import RedisServer
from procmond.store.wal import WriteAheadLog

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


async def test_second_sigint_exits_at_once_and_the_log_keeps_the_rest(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """With events unsent (Redis frozen), SIGINT starts a drain; a second exits 130 at once."""
    cid = new_id("si")
    marker = f"second-sigint-{cid}"
    async with running_agent(fresh_redis.url) as agent:
        with daemon(tmp_path, fresh_redis.url, cid) as proc:
            await agent.wait_for_state(cid, "ready", timeout=15)
            fresh_redis.pause()
            try:
                before = wal_bytes(proc.data_dir, cid)

                async def logged() -> int:
                    return wal_contains(proc.data_dir, cid, marker)

                with churn_child(marker):
                    # The child's start event reaches the log, not the frozen Redis.
                    await poll(logged, lambda n: n > 0, timeout=15)
                assert wal_bytes(proc.data_dir, cid) > before
                proc.signal(signal.SIGINT)
                await proc.wait_for_output("SIGINT received", timeout=10)
                proc.signal(signal.SIGINT)
                assert await proc.wait_async(10) == 130
                assert "second interrupt" in proc.stderr_text()
            finally:
                fresh_redis.resume()
    # The unsent event is still in the log for the next start.
    log = WriteAheadLog(proc.data_dir / "wal" / cid)
    try:
        pending = log.open()
    finally:
        log.close()
    assert any(marker.encode() in record.payload for record in pending)
