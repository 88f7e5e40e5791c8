"""ProcessCollector against the real machine: real children, real /proc, no sleeps.

Every wait is on a readiness signal: a line the child prints, EOF on a pipe
closed by exec, or waitid()/waitpid() on the child's state change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess

import psutil
import pytest
from collector_support import BLOCK_ON_STDIN, SECRET, child, end, events_for, only_event

from procmond.collect.collector import CollectorSettings, ProcessCollector

RENAME_ON_LINE = """
import ctypes, sys
print('ready', flush=True)
sys.stdin.readline()
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME = 15
if libc.prctl(PR_SET_NAME, b"pm-renamed", 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "prctl")
print('renamed', flush=True)
sys.stdin.read()
"""

EXEC_ON_LINE = """
import os, sys
fd = int(sys.argv[1])
print('ready', flush=True)
sys.stdin.readline()
os.set_inheritable(fd, False)  # closed by exec: the parent reads EOF once it happened
os.execv(sys.argv[2], [sys.argv[2]])
"""


def test_baseline_reports_every_process_as_start_including_our_own() -> None:
    """The first cycle is the baseline: every process a start with baseline=True, ours too."""
    collector = ProcessCollector()
    result = collector.collect()
    assert result.baseline
    assert result.events
    assert all(e.event_type == "start" and e.baseline for e in result.events)
    assert result.processes == len(result.events)
    assert only_event(result, os.getpid(), "start").name


def test_second_cycle_is_not_baseline_and_quiet_for_ourselves() -> None:
    """After the baseline, cycles are not baseline and an unchanged process yields nothing."""
    collector = ProcessCollector()
    collector.collect()
    result = collector.collect()
    assert not result.baseline
    assert events_for(result, os.getpid()) == []
    assert all(not e.baseline for e in result.events)


def test_new_child_is_a_start_with_redacted_cmdline_and_metadata() -> None:
    """A child started after the baseline is a non-baseline start whose secret is redacted."""
    collector = ProcessCollector()
    collector.collect()
    with child(BLOCK_ON_STDIN, "--password", SECRET, f"API_TOKEN={SECRET}") as proc:
        event = only_event(collector.collect(), proc.pid, "start")
        assert not event.baseline
        assert event.ppid == os.getpid()
        assert event.cmdline is not None
        assert event.cmdline[-3:] == ("--password", "[REDACTED]", "API_TOKEN=[REDACTED]")
        assert SECRET not in json.dumps(event.to_wire())
        assert event.exe == psutil.Process(proc.pid).exe()
        assert event.username == psutil.Process(proc.pid).username()
        assert event.start_time == pytest.approx(psutil.Process(proc.pid).create_time(), abs=1.5)
        assert event.status in {"sleeping", "running"}  # it may not have blocked yet
        assert event.memory_rss is not None
        assert event.memory_rss > 0
        assert event.cpu_percent is not None
        end(proc)


def test_ended_child_is_a_stop_with_last_known_fields() -> None:
    """A child that exits and is reaped is reported once as a stop carrying what was known."""
    collector = ProcessCollector()
    with child(BLOCK_ON_STDIN, "--token", SECRET) as proc:
        start = only_event(collector.collect(), proc.pid, "start")
        end(proc)
    result = collector.collect()
    stop = only_event(result, proc.pid, "stop")
    assert (stop.pid, stop.ppid, stop.name, stop.exe, stop.cmdline, stop.start_time) == (
        start.pid,
        start.ppid,
        start.name,
        start.exe,
        start.cmdline,
        start.start_time,
    )
    assert stop.cmdline is not None
    assert "[REDACTED]" in stop.cmdline
    assert events_for(collector.collect(), proc.pid) == []


def test_rename_via_prctl_is_a_modify_naming_the_name() -> None:
    """PR_SET_NAME changes comm: the next cycle reports a modify with 'name' changed."""
    collector = ProcessCollector()
    with child(RENAME_ON_LINE) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        collector.collect()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "renamed\n"
        event = only_event(collector.collect(), proc.pid, "modify")
        assert event.name == "pm-renamed"
        assert event.changed == ("name",)
        assert event.to_wire()["changed"] == ["name"]
        end(proc)


def test_exec_is_a_modify_naming_name_exe_and_cmdline() -> None:
    """An exec to another program is a modify naming name, exe and cmdline, same key."""
    cat = shutil.which("cat")
    assert cat is not None
    read_end, write_end = os.pipe()
    collector = ProcessCollector()
    try:
        with child(EXEC_ON_LINE, str(write_end), cat, pass_fds=(write_end,)) as proc:
            os.close(write_end)
            write_end = -1
            assert proc.stdin is not None
            before = only_event(collector.collect(), proc.pid, "start")
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert os.read(read_end, 1) == b""  # EOF: the exec closed the child's copy
            event = only_event(collector.collect(), proc.pid, "modify")
            assert event.name == "cat"
            assert event.exe == os.path.realpath(cat)
            assert event.cmdline == (cat,)
            assert set(event.changed) == {"name", "exe", "cmdline"}
            assert event.start_time == before.start_time
            end(proc)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_zombie_and_stopped_transitions_are_modifies() -> None:
    """Entering stopped, leaving it, and becoming a zombie each give a status modify."""
    collector = ProcessCollector()
    with child() as proc:
        collector.collect()
        os.kill(proc.pid, signal.SIGSTOP)
        os.waitpid(proc.pid, os.WUNTRACED)  # returns once it is stopped
        stopped = only_event(collector.collect(), proc.pid, "modify")
        assert (stopped.status, stopped.changed) == ("stopped", ("status",))
        os.kill(proc.pid, signal.SIGCONT)
        os.waitpid(proc.pid, os.WCONTINUED)  # returns once it runs again
        resumed = only_event(collector.collect(), proc.pid, "modify")
        assert resumed.status != "stopped"
        assert resumed.changed == ("status",)
        assert proc.stdin is not None
        proc.stdin.close()  # EOF: the child exits
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
        zombie = only_event(collector.collect(), proc.pid, "modify")
        assert (zombie.status, zombie.changed) == ("zombie", ("status",))
        proc.wait(timeout=30)
        assert only_event(collector.collect(), proc.pid, "stop").status == "zombie"


def test_running_sleeping_flip_is_not_an_event() -> None:
    """A status change between ordinary states (running <-> sleeping) produces no event."""
    collector = ProcessCollector()
    with child() as proc:
        collector.collect()
        key = next(k for k in collector._tracked if k[0] == proc.pid)
        # The child is running or sleeping on stdin; pretend it was last seen in
        # another ordinary state, so the next cycle sees a flip between the two.
        collector._tracked[key].status = "disk-sleep"
        assert events_for(collector.collect(), proc.pid) == []
        assert collector._tracked[key].status in {"sleeping", "running"}
        end(proc)


def test_max_processes_keeps_the_lowest_pids_and_flags_truncation() -> None:
    """With max_processes the scan keeps the lowest pids and reports truncated=True."""
    collector = ProcessCollector(CollectorSettings(max_processes=1))
    with child() as proc:
        result = collector.collect()
        assert result.truncated
        assert result.processes == 1
        assert [e.pid for e in result.events] == [1]  # init: the lowest pid there is
        assert events_for(result, proc.pid) == []
        end(proc)
    unlimited = ProcessCollector(CollectorSettings(max_processes=10_000_000)).collect()
    assert not unlimited.truncated


def test_processes_beyond_a_new_limit_are_neither_stopped_nor_restarted() -> None:
    """Lowering max_processes does not invent stops; raising it again does not repeat starts."""
    collector = ProcessCollector()
    with child() as proc:
        collector.collect()
        collector.update_settings(CollectorSettings(max_processes=1))
        limited = collector.collect()
        assert limited.truncated
        assert events_for(limited, proc.pid) == []
        collector.update_settings(CollectorSettings())
        assert events_for(collector.collect(), proc.pid) == []
        end(proc)
    assert only_event(collector.collect(), proc.pid, "stop")


def test_settings_update_takes_effect_on_next_collect() -> None:
    """update_settings applies at the next cycle: enhanced metadata off, hashes on."""
    collector = ProcessCollector()
    collector.collect()
    collector.update_settings(
        CollectorSettings(
            collect_enhanced_metadata=False,
            compute_executable_hashes=True,
            hash_budget_secs=60.0,
        )
    )
    with child() as proc:
        event = only_event(collector.collect(), proc.pid, "start")
        assert event.cpu_percent is None
        assert event.memory_rss is None
        assert event.exe is not None
        with open(event.exe, "rb") as f:
            assert event.exe_sha256 == hashlib.sha256(f.read()).hexdigest()
        wire = event.to_wire()
        assert "cpu_percent" not in wire
        assert "memory_rss" not in wire
        assert wire["exe_sha256"] == event.exe_sha256
        end(proc)


def test_exhausted_hash_budget_leaves_hash_out() -> None:
    """With no hash budget left, a start goes out without exe_sha256 instead of waiting."""
    collector = ProcessCollector(
        CollectorSettings(compute_executable_hashes=True, hash_budget_secs=0.0)
    )
    collector.collect()
    with child() as proc:
        assert only_event(collector.collect(), proc.pid, "start").exe_sha256 is None
        end(proc)


def test_per_process_errors_are_counted_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that vanishes while its metadata is read is skipped, counted, retried later."""
    collector = ProcessCollector()
    collector.collect()
    with child() as proc:
        real_exe = psutil.Process.exe

        def failing_exe(self: psutil.Process) -> str:
            if self.pid == proc.pid:
                raise psutil.NoSuchProcess(self.pid)
            return real_exe(self)

        monkeypatch.setattr(psutil.Process, "exe", failing_exe)
        failed = collector.collect()
        assert failed.errors >= 1
        assert events_for(failed, proc.pid) == []
        monkeypatch.undo()
        assert only_event(collector.collect(), proc.pid, "start")
        end(proc)


def test_racing_short_lived_children_never_raise() -> None:
    """Children exiting during the scan never make collect() raise; the totals stay consistent."""
    collector = ProcessCollector()
    collector.collect()
    true = shutil.which("true")
    assert true is not None
    procs = [subprocess.Popen([true]) for _ in range(30)]
    try:
        for _ in range(5):
            result = collector.collect()
            assert result.errors <= len(procs)  # only the racing children can fail a read
            assert result.processes >= 1
    finally:
        for p in procs:
            p.wait(timeout=30)
    pids = {p.pid for p in procs}
    assert all(
        e.event_type in ("start", "stop") for e in collector.collect().events if e.pid in pids
    )


def test_psutil_scan_path_gives_the_same_events() -> None:
    """Without procfs the psutil scan path reports the same start and stop."""
    collector = ProcessCollector()
    collector._procfs = False  # the portable path, forced on Linux
    collector.collect()
    with child(BLOCK_ON_STDIN, "--secret", SECRET) as proc:
        start = only_event(collector.collect(), proc.pid, "start")
        assert start.cmdline is not None
        assert start.cmdline[-2:] == ("--secret", "[REDACTED]")
        assert events_for(collector.collect(), proc.pid) == []
        end(proc)
    assert only_event(collector.collect(), proc.pid, "stop").start_time == start.start_time
