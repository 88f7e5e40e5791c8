"""Kernel process events end to end: a storm of short-lived processes started by a separate
shell, against a real ``procmond run`` over a real redis-server (protocol section 9)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from contract_agent import seq_report
from e2e_support import daemon, new_id, poll, running_agent

from procmond.embedded import RedisServer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.redis,
    pytest.mark.skipif(os.geteuid() != 0, reason="the kernel's process events need root"),
]

#: Issue 10: a storm of 1,000 execs of a millisecond-long program.
STORM = 1000


def of_shell(entries: list[dict[str, Any]], stream: str, shell: int) -> list[dict[str, Any]]:
    """Events of ``stream`` whose process is a child of ``shell``."""
    return [
        e
        for e in entries
        if e["stream"] == f"events.process.{stream}" and e["event"]["ppid"] == shell
    ]


async def test_an_exec_storm_reaches_the_streams_resolved_and_paired(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """1,000 `/bin/true` run by a separate shell: at least 99.9 % give an `exec` event, most
    with the command line resolved; each process has one start before its exec and one
    kernel stop with exit code 0; no seq gap; capture_mode says kernel."""
    cid = new_id()
    async with running_agent(fresh_redis.url) as agent:
        with daemon(tmp_path, fresh_redis.url, cid) as proc:
            await agent.wait_for_state(cid, "ready", timeout=15)
            health = await agent.call(cid, "HealthCheck", None)
            assert health["payload"]["metrics"]["capture_mode"] == "kernel", proc.stderr_text()
            marker = f"storm-{cid}"
            storm = subprocess.Popen(  # noqa: ASYNC220 - waited for below, bounded
                ["sh", "-c", f"for i in $(seq {STORM}); do /bin/true {marker} $i; done"]
            )
            assert storm.wait(timeout=120) == 0
            entries = await poll(
                lambda: agent.read_events(cid),
                lambda e: len(of_shell(e, "stop", storm.pid)) >= STORM - 1,
                timeout=60,
                every=0.5,
            )
            execs = of_shell(entries, "exec", storm.pid)
            resolved = [e for e in execs if marker in (e["event"]["cmdline"] or [])]
            partial = [e for e in execs if e["event"]["partial"]]
            print(
                f"exec storm: {len(execs)} execs, {len(resolved)} resolved, {len(partial)} partial"
            )
            assert len(execs) >= STORM * 0.999
            # Resolution depends on scheduling: bench/bench_kernel.py holds the 90 % target;
            # half is far below any run seen here, and far above a bug.
            assert len(resolved) >= STORM * 0.5
            assert all(e["event"]["source"] == "kernel" for e in execs)
            details = ("cmdline", "exe", "name", "username")
            assert all(None in [e["event"][d] for d in details] for e in partial)
            seq_of = {(e["stream"], e["event"]["pid"]): e["seq"] for e in entries}
            for e in execs:
                pid = e["event"]["pid"]
                assert seq_of[("events.process.start", pid)] < e["seq"]
            # A cycle that runs between an exit and its record reports the stop first
            # (exit fields null); the kernel's record then changes nothing.
            stops = of_shell(entries, "stop", storm.pid)
            assert {
                (s["event"]["source"], s["event"]["exit_code"], s["event"]["exit_signal"])
                for s in stops
            } <= {("kernel", 0, 0), ("cycle", None, None)}
            starts = of_shell(entries, "start", storm.pid)
            assert len({s["event"]["pid"] for s in starts}) == len(starts)  # one start each
            report = seq_report(entries)
            assert report.first == 1
            assert report.missing == []
            metrics = (await agent.call(cid, "HealthCheck", None))["payload"]["metrics"]
            assert metrics["kernel_events"] >= 3 * STORM * 0.999
            assert metrics["partial_events"] >= len(partial)


async def test_without_kernel_events_the_cycle_collects_alone(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """--no-kernel-events: capture_mode cycle with the reason logged, events from cycles only,
    and UpdateConfig kernel_events=true switches the kernel source on at the next boundary."""
    cid = new_id()
    async with running_agent(fresh_redis.url) as agent:
        with daemon(tmp_path, fresh_redis.url, cid, extra_args=("--no-kernel-events",)) as proc:
            await agent.wait_for_state(cid, "ready", timeout=15)
            health = await agent.call(cid, "HealthCheck", None)
            assert health["payload"]["metrics"]["capture_mode"] == "cycle"
            assert health["payload"]["config"]["kernel_events"] is False
            entries = await poll(lambda: agent.read_events(cid), bool, timeout=15)
            assert {e["event"]["source"] for e in entries} == {"cycle"}
            switched = await agent.call(cid, "UpdateConfig", {"changes": {"kernel_events": True}})
            assert switched["payload"]["changed_fields"] == ["kernel_events"]
            after = await agent.call(cid, "HealthCheck", None)
            assert after["payload"]["metrics"]["capture_mode"] == "kernel"
            assert "capture mode cycle: kernel_events is off" in proc.stderr_text()


def reader_children(daemon_pid: int) -> list[int]:
    """The daemon's kernel reader children (``python -m procmond.collect.kernel_process``)."""
    found = subprocess.run(
        ["pgrep", "-P", str(daemon_pid), "-f", "procmond.collect.kernel_process"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return [int(pid) for pid in found.stdout.split()]


async def test_a_dead_reader_child_is_counted_and_replaced(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """SIGKILL the kernel reader child: the loss is counted (HealthCheck), a new reader
    starts, and the daemon stays in kernel mode and collects what comes next."""
    cid = new_id()
    async with running_agent(fresh_redis.url) as agent:
        with daemon(tmp_path, fresh_redis.url, cid) as proc:
            await agent.wait_for_state(cid, "ready", timeout=15)
            (first,) = reader_children(proc.pid)
            os.kill(first, signal.SIGKILL)
            health = await poll(
                lambda: agent.call(cid, "HealthCheck", None),
                lambda h: (
                    h["payload"]["metrics"]["kernel_events_lost"] >= 1
                    and bool(reader_children(proc.pid))
                ),
                timeout=30,
                every=0.2,
            )
            assert health["payload"]["metrics"]["capture_mode"] == "kernel"
            assert reader_children(proc.pid) != [first]
            assert "the kernel event reader ended unexpectedly" in proc.stderr_text()
