"""End to end under faults: Redis restarted, procmond SIGKILLed, registration refused,
and the embedded default Redis. Each counts the events lost (a gap in ``seq``): it must be 0.
"""

from __future__ import annotations

import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from contract_agent import ContractAgent, seq_report
from e2e_support import (
    churn_child,
    daemon,
    marked,
    new_id,
    poll,
    running_agent,
    started,
    wal_contains,
)

from procmond.embedded import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    """A private server with AOF on, so ``stop()`` then ``start()`` keeps the streams."""
    base = Path(tempfile.mkdtemp(prefix="pmp-"))  # short: the socket path limit is 107 bytes
    server = RedisServer(base / "r", persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


async def caught_up(agent: ContractAgent, cid: str, timeout: float = 20) -> None:
    """Wait until the collector is connected and its log holds nothing unsent."""
    await poll(
        lambda: agent.call(cid, "HealthCheck", None),
        lambda h: (
            h["status"] == "Success"
            and h["payload"]["connection_status"] == "Connected"
            and h["payload"]["metrics"]["collection_cycles"] >= 1  # this boot's baseline is in
            and h["payload"]["metrics"]["wal_pending"] == 0
            and h["payload"]["metrics"]["events_published"] > 0
        ),
        timeout=timeout,
    )


async def shut_down(agent: ContractAgent, cid: str) -> None:
    """GracefulShutdown, answered Success."""
    answer = await agent.call(cid, "GracefulShutdown", {"reason": "end of test"}, timeout=20)
    assert answer["status"] == "Success", answer


async def test_redis_restart_loses_no_event_and_registers_again(
    tmp_path: Path, persistent_redis: RedisServer
) -> None:
    """Redis stopped mid-run: events made meanwhile wait in the log, go out after the
    restart with seq contiguous from 1, and the collector registers again."""
    cid = new_id()
    marker = f"outage-{cid}"
    async with running_agent(persistent_redis.url) as agent:
        with daemon(tmp_path, persistent_redis.url, cid) as proc:
            await agent.wait_for_state(cid, "ready", timeout=15)
            await caught_up(agent, cid)

            persistent_redis.stop()
            with churn_child(marker):
                await poll(
                    lambda: _async(wal_contains(proc.data_dir, cid, marker)),
                    lambda n: n >= 1,
                    timeout=15,
                )
            # Its stop event is logged too, still without Redis.
            await poll(
                lambda: _async(wal_contains(proc.data_dir, cid, marker)),
                lambda n: n >= 2,
                timeout=15,
            )
            assert proc.returncode is None
            persistent_redis.start()

            again = await agent.wait_for_state(cid, "ready", count=2, timeout=30)
            boots = {r.message["payload"]["boot_id"] for r in agent.registers.items}
            assert boots == {again["boot_id"]}
            assert len(agent.registers.items) >= 2
            await caught_up(agent, cid)

            entries = await agent.read_events(cid)
            report = seq_report(entries)
            print(f"redis restart: events lost {report.lost}, duplicates {report.duplicates}")
            assert report.first == 1
            assert report.missing == []
            assert started(entries, marker)
            assert marked(entries, marker, "events.process.stop")
            # Heartbeat numbers go on across the re-registration (gaps = lost while down).
            sequences = [b.message["sequence"] for b in agent.heartbeats[cid].items]
            assert sequences == sorted(set(sequences))
            assert sequences[0] == 1
            await shut_down(agent, cid)
            assert await proc.wait_async(15) == 0


async def test_kill_9_then_restart_replays_the_log_without_a_gap(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """SIGKILL with events logged but unacknowledged: the next start on the same data
    directory replays them; seq is contiguous (duplicates allowed)."""
    cid = new_id()
    marker = f"crash-{cid}"
    async with running_agent(fresh_redis.url) as agent:
        with daemon(tmp_path, fresh_redis.url, cid) as first:
            await agent.wait_for_state(cid, "ready", timeout=15)
            await caught_up(agent, cid)
            fresh_redis.pause()  # XADDs hang: what is logged now stays unacknowledged
            try:
                with churn_child(marker):
                    await poll(
                        lambda: _async(wal_contains(first.data_dir, cid, marker)),
                        lambda n: n >= 1,
                        timeout=15,
                    )
                    assert first.kill() == -signal.SIGKILL
            finally:
                fresh_redis.resume()

        with daemon(tmp_path, fresh_redis.url, cid) as second:
            line = await second.wait_for_output("replaying", timeout=15)
            replayed = int(re.search(r"replaying (\d+) events", line).group(1))  # type: ignore[union-attr]
            assert replayed >= 1
            await agent.wait_for_state(cid, "ready", count=2, timeout=15)
            await caught_up(agent, cid)
            entries = await agent.read_events(cid)
            report = seq_report(entries)
            print(
                f"kill -9: replayed {replayed}, events lost {report.lost}, "
                f"duplicates {report.duplicates}"
            )
            assert report.first == 1
            assert report.missing == []
            assert started(entries, marker)
            assert len({e["boot_id"] for e in entries}) == 2
            await shut_down(agent, cid)
            assert await second.wait_async(15) == 0


async def test_registration_rejected_then_accepted(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """A rejection is retried (after backoff) with the same boot_id; then ready, heartbeat 1."""
    cid = new_id()
    async with running_agent(fresh_redis.url) as agent:
        agent.register_script = ["reject"]
        with daemon(tmp_path, fresh_redis.url, cid) as proc:
            await agent.wait_for_state(cid, "ready", timeout=15)
            registers = agent.registers.items
            assert len(registers) == 2
            assert (
                registers[0].message["payload"]["boot_id"]
                == (registers[1].message["payload"]["boot_id"])
            )
            assert registers[0].message["request_id"] != registers[1].message["request_id"]
            beats = await agent.wait_for_heartbeats(cid, 1)
            assert beats[0].message["sequence"] == 1
            proc.signal(signal.SIGTERM)
            assert await proc.wait_async(15) == 0


async def test_registration_attempts_exhausted_exits_4(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """With --registration-attempts 2 and an agent that always rejects: exit 4, never ready."""
    cid = new_id()
    async with running_agent(fresh_redis.url, register_mode="reject") as agent:
        with daemon(
            tmp_path, fresh_redis.url, cid, extra_args=("--registration-attempts", "2")
        ) as proc:
            assert await proc.wait_async(20) == 4
            assert len(agent.registers.items) == 2
            assert "ready" not in agent.states(cid)
            assert agent.deregisters.items == []


async def test_embedded_default_redis_answers_health_check(tmp_path: Path) -> None:
    """Without --redis-url procmond starts its own Redis in the data directory and serves there."""
    cid = new_id()
    with daemon(tmp_path, None, cid, name="d") as proc:
        line = await proc.wait_for_output("started embedded Redis", timeout=20)
        url = line.rsplit(" at ", 1)[1].strip()
        assert url.startswith("unix://")
        url_file = proc.data_dir / "redis" / "redis.url"
        assert url_file.read_text().strip() == url
        await proc.wait_for_output("using Redis at", timeout=10)
        async with running_agent(url) as agent:
            await agent.wait_listening(cid, timeout=20)
            health = await poll(
                lambda: agent.call(cid, "HealthCheck", None, timeout=3),
                lambda h: h["status"] == "Success",
                timeout=20,
            )
            assert health["payload"]["collector_id"] == cid
            assert health["payload"]["connection_status"] == "Connected"
            proc.signal(signal.SIGTERM)
            assert await proc.wait_async(15) == 0
        assert not url_file.exists()


async def _async(value: int) -> int:
    return value
