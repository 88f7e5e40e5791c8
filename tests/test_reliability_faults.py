"""Reliability under injected faults (issue 5, faults 1, 2, 3 and 7), end to end.

Each test runs a real ``procmond run`` against a real redis-server while
:class:`~reliability_support.Churn` keeps short-lived processes coming, so
there are events to lose; it injects its fault a number of times (a few in
the quick suite, many in ``make soak``), then checks that ``seq`` runs from
1 with no gap (0 events lost) and records its figures.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from contract_agent import seq_report
from daemon_process import DaemonProcess
from e2e_support import daemon, new_id, poll, running_agent, started
from redis.asyncio import Redis
from reliability_support import (
    Churn,
    Requests,
    alive,
    blocked_children,
    counts,
    durable_redis,
    heartbeat_gaps,
    record,
    release,
    wait_gone,
    wal_bytes,
)

from procmond.embedded import RedisServer
from procmond.store.wal import FRAME_OVERHEAD

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


async def wal_grows(data_dir: Path, cid: str, before: int, timeout: float = 15.0) -> int:
    """Wait (bounded) until the collector's log holds more than ``before`` bytes."""

    async def size() -> int:
        return wal_bytes(data_dir, cid)

    return await poll(size, lambda n: n > before, timeout=timeout, every=0.05)


@pytest.mark.parametrize("restarts", counts(3, 30))
async def test_redis_killed_and_restarted_loses_no_event(tmp_path: Path, restarts: int) -> None:
    """Redis stopped or SIGKILLed N times during collection: every event logged meanwhile
    reaches the streams (seq contiguous from 1), the collector registers again after each
    restart, and heartbeat numbers only grow, with gaps only across the outages."""
    rng = random.Random(5)
    cid = new_id("rr")
    with durable_redis() as server, Churn() as churn:
        async with running_agent(server.url) as agent:
            calls = Requests(agent)
            with daemon(tmp_path, server.url, cid) as proc:
                await agent.wait_for_state(cid, "ready", timeout=15)
                await calls.caught_up(cid)
                for restart in range(restarts):
                    before = wal_bytes(proc.data_dir, cid)
                    if rng.random() < 0.5:
                        server.kill()
                    else:
                        server.stop()
                    await wal_grows(proc.data_dir, cid, before)  # a cycle logged while down
                    assert proc.returncode is None, proc.tail()
                    server.start()
                    await agent.wait_for_state(cid, "ready", count=restart + 2, timeout=40)
                health = await calls.caught_up(cid)
                entries = await agent.read_events(cid)
                report = seq_report(entries)
                sequences = [b.message["sequence"] for b in agent.heartbeats[cid].items]
                await calls.shutdown(cid)
                assert await proc.wait_async(20) == 0
    assert report.first == 1
    assert report.missing == []
    assert len({e["boot_id"] for e in entries}) == 1
    assert len(agent.registers.items) >= restarts + 1
    assert sequences == sorted(set(sequences)), "heartbeat sequence not strictly increasing"
    assert sequences[0] == 1
    assert heartbeat_gaps(sequences) <= restarts, sequences
    record(
        "redis-restart",
        injected=restarts,
        children_spawned=churn.spawned,
        events=report.distinct,
        lost=report.lost,
        duplicates=report.duplicates,
        registrations=len(agent.registers.items),
        heartbeats_received=len(sequences),
        heartbeat_last_seq=sequences[-1],
        heartbeat_gap_runs=heartbeat_gaps(sequences),
        heartbeats_sent=health["metrics"]["heartbeats_sent"],
        requests_sent=calls.sent,
        requests_answered=calls.answered,
    )


@pytest.mark.parametrize("freezes", counts(2, 20))
async def test_redis_frozen_then_resumed_is_noticed_and_caught_up(
    tmp_path: Path, freezes: int
) -> None:
    """Redis SIGSTOPped: procmond notices within seconds (its JSON log says the server went
    silent), keeps logging events, and after SIGCONT registers again and catches up with
    nothing lost."""
    cid = new_id("fz")
    noticed: list[float] = []
    with durable_redis() as server, Churn() as churn:
        async with running_agent(server.url) as agent:
            calls = Requests(agent)
            with daemon(tmp_path, server.url, cid) as proc:
                await agent.wait_for_state(cid, "ready", timeout=15)
                await calls.caught_up(cid)
                for freeze in range(freezes):
                    seen = len(_silence_lines(proc))
                    before = wal_bytes(proc.data_dir, cid)
                    server.pause()
                    frozen_at = time.monotonic()
                    try:
                        await poll(
                            lambda: _async(len(_silence_lines(proc))),
                            _above(seen),
                            timeout=15,
                            every=0.05,
                        )
                        noticed.append(round(time.monotonic() - frozen_at, 2))
                        await wal_grows(proc.data_dir, cid, before)
                    finally:
                        server.resume()
                    await agent.wait_for_state(cid, "ready", count=freeze + 2, timeout=40)
                    health = await calls.caught_up(cid)
                    assert health["status"] == "Healthy", health
                beats = [b.message for b in agent.heartbeats[cid].items]
                entries = await agent.read_events(cid)
                report = seq_report(entries)
                await calls.shutdown(cid)
                assert await proc.wait_async(20) == 0
    assert report.first == 1
    assert report.missing == []
    sequences = [b["sequence"] for b in beats]
    assert sequences == sorted(set(sequences))
    assert heartbeat_gaps(sequences) <= freezes
    # After each resume the collector's heartbeats say Connected again.
    assert beats[-1]["metrics"]["connection_status"] == "Connected"
    record(
        "redis-freeze",
        injected=freezes,
        children_spawned=churn.spawned,
        noticed_after_s=noticed,
        events=report.distinct,
        lost=report.lost,
        duplicates=report.duplicates,
        registrations=len(agent.registers.items),
        heartbeats_received=len(sequences),
        requests_sent=calls.sent,
        requests_answered=calls.answered,
    )


def _silence_lines(proc: DaemonProcess) -> list[str]:
    """The daemon's JSON log lines saying its pub/sub connection to Redis was lost."""
    return [
        r["message"]
        for r in proc.log_records()
        if r.get("logger") == "procmond.bus" and "redis pub/sub connection" in r["message"]
    ]


@pytest.mark.parametrize("kills", counts(5, 40))
async def test_procmond_sigkilled_at_random_moments_loses_nothing(
    tmp_path: Path, kills: int
) -> None:
    """procmond (with its embedded Redis) SIGKILLed after seeded random delays, mid-cycle
    or mid-flush, and started again on the same data directory: 0 events lost, duplicates
    at most what the log replayed, a torn last record tolerated, and the embedded Redis
    never outlives the daemon that started it."""
    rng = random.Random(11)
    cid = new_id("kl")
    data_dir = Path(tmp_path) / "d"
    replayed: list[int] = []
    delays: list[float] = []
    redis_pids: list[int] = []
    catch_up: list[float] = []
    torn = 0
    sent = answered = 0
    entries: list[dict[str, Any]] = []
    with Churn() as churn:
        for run in range(kills + 1):
            proc = DaemonProcess(data_dir, redis_url=None, collector_id=cid)
            proc.log_path = tmp_path / f"run{run}.log"
            with proc:
                started_at = time.monotonic()
                line = await proc.wait_for_output("started embedded Redis", timeout=20)
                pid_match = re.search(r"\(pid (\d+)\) at (\S+)", line)
                assert pid_match is not None, line
                redis_pid, url = int(pid_match.group(1)), pid_match.group(2)
                redis_pids.append(redis_pid)
                await proc.wait_for_output("using Redis at", timeout=20)
                again = re.search(r"replaying (\d+) events", proc.stderr_text())
                replayed.append(int(again.group(1)) if again else 0)
                # A new agent per run: each run's Redis is a new server on the same socket.
                async with running_agent(url) as agent:
                    calls = Requests(agent)
                    try:
                        await calls.caught_up(cid)
                        catch_up.append(round(time.monotonic() - started_at, 2))
                        if run == kills:
                            entries = await agent.read_events(cid)
                            await calls.shutdown(cid)
                            assert await proc.wait_async(20) == 0
                            await wait_gone(redis_pid)
                            break
                    finally:
                        sent, answered = sent + calls.sent, answered + calls.answered
                delay = round(rng.uniform(0.0, 2.5), 3)
                delays.append(delay)
                await asyncio.sleep(delay)  # the fault's random moment, by design
                assert proc.kill() == -signal.SIGKILL
                await wait_gone(redis_pid)
                if run == 1:
                    torn += _tear_last_record(data_dir / "wal" / cid)
    report = seq_report(entries)
    assert not any(alive(pid) for pid in redis_pids)
    assert report.first == 1
    assert report.missing == []
    assert report.duplicates <= sum(replayed), (report.duplicates, replayed)
    record(
        "procmond-sigkill",
        injected=kills,
        delays_s=delays,
        start_to_caught_up_s=catch_up,
        children_spawned=churn.spawned,
        events=report.distinct,
        lost=report.lost,
        duplicates=report.duplicates,
        replayed_from_log=sum(replayed),
        torn_records_injected=torn,
        boots=len({e["boot_id"] for e in entries}),
        embedded_redis_orphans=sum(1 for pid in redis_pids if alive(pid)),
        requests_sent=sent,
        requests_answered=answered,
    )


def _tear_last_record(directory: Path) -> int:
    """Append half a frame header to the last segment: what a crash mid-write leaves."""
    segments = sorted(directory.glob("wal-*.log"))
    with segments[-1].open("ab") as handle:
        handle.write(b"\x40\x00\x00\x00\x01" + b"\x00" * (FRAME_OVERHEAD // 2))
    return 1


@pytest.mark.parametrize("episodes", counts(1, 5))
async def test_write_ahead_log_full_is_unhealthy_then_recovers(
    tmp_path: Path, fresh_redis: RedisServer, episodes: int
) -> None:
    """With the log capped at 1 MiB and Redis refusing every XADD (OOM), big churn
    fills the log: HealthCheck says Unhealthy with a reason naming the log, the daemon
    keeps running (no crash loop) and holds the events it saw; when Redis takes XADDs
    again the log frees, the held events go out, seq has no gap, health comes back."""
    cid = new_id("wf")
    config = tmp_path / "small-wal.toml"
    config.write_text("wal_max_bytes = 1048576\n")
    redis = Redis.from_url(fresh_redis.url)
    big = "x" * 60_000  # ~60 kB per event: 20 children pass the 1 MiB cap
    reasons: list[str] = []
    children_seen = 0
    errors_while_full: list[int] = []
    try:
        async with running_agent(fresh_redis.url) as agent:
            calls = Requests(agent)
            with daemon(tmp_path, fresh_redis.url, cid, extra_args=("--config", str(config))) as p:
                await agent.wait_for_state(cid, "ready", timeout=15)
                await calls.caught_up(cid)
                for episode in range(episodes):
                    marker = f"walfull-{episode}-{cid}"
                    # Every XADD now fails with OOM (PUBLISH still works, so HealthCheck
                    # does): nothing leaves the log, and the streams stay intact.
                    await redis.config_set("maxmemory", "1")
                    children = blocked_children(marker, 24, big)
                    try:
                        full = await poll(
                            lambda: calls.health(cid),
                            lambda h: h["status"] == "Unhealthy",
                            timeout=30,
                            every=0.2,
                        )
                        reasons += [r for r in full["reasons"] if "write-ahead log" in r]
                        assert reasons, full
                        # It keeps trying each cycle, without crashing or restarting.
                        errors: int = full["metrics"]["collection_errors"]
                        later = await poll(
                            lambda: calls.health(cid),
                            _errors_reach(errors + 2),
                            timeout=15,
                        )
                        errors_while_full.append(later["metrics"]["collection_errors"])
                        assert later["status"] == "Unhealthy"
                        assert later["pid"] == p.pid
                        assert p.returncode is None
                    finally:
                        release(children)
                    await redis.config_set("maxmemory", "0")  # Redis takes XADDs again
                    await calls.caught_up(cid, timeout=60)
                    entries = await agent.read_events(cid)
                    seen = started(entries, marker)
                    children_seen += len(seen)
                    assert len(seen) >= 24, len(seen)
                health = await calls.health(cid)
                assert health["status"] == "Healthy", health
                entries = await agent.read_events(cid)
                report = seq_report(entries)
                refused = [r for r in p.log_records() if "write-ahead log refused" in r["message"]]
                await calls.shutdown(cid)
                assert await p.wait_async(20) == 0
    finally:
        await redis.aclose()
    assert report.first == 1
    assert report.missing == []
    # A clear error when the log fills (again, when recovery refills it for a moment),
    # not one line per failed cycle.
    assert refused
    assert all(r["level"] == "error" for r in refused)
    assert "write-ahead log full" in refused[0]["message"]
    assert len(refused) < errors_while_full[-1], (refused, errors_while_full)
    record(
        "wal-full",
        injected=episodes,
        wal_max_bytes=1048576,
        big_children=24 * episodes,
        big_children_reported=children_seen,
        unhealthy_reason=reasons[0],
        failed_cycles_while_full=errors_while_full,
        error_lines=len(refused),
        events=report.distinct,
        lost=report.lost,
        duplicates=report.duplicates,
        requests_sent=calls.sent,
        requests_answered=calls.answered,
    )


def _errors_reach(count: int) -> Callable[[dict[str, Any]], bool]:
    return lambda health: bool(health["metrics"]["collection_errors"] >= count)


def _above(floor: int) -> Callable[[int], bool]:
    return lambda n: n > floor


async def _async(value: int) -> int:
    return value
