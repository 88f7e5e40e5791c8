"""The kernel's and the cycle's views merged in one table: whatever the interleaving of
kernel records (delivered at once, late, or lost) and cycles, no process is reported
started twice, or stopped (or exec'd) without a start, or stopped twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from procmond.collect import collector as collector_module
from procmond.collect.collector import ProcessCollector
from procmond.collect.kernel import KernelRecord
from procmond.collect.process_event import ProcessEvent
from procmond.collect.scan import CLK_TCK
from procmond.collect.state import Cycle


@dataclass
class FakeProc:
    pid: int
    start_ticks: int
    ppid: int
    comm: str
    argv: list[str] = field(default_factory=list)


class World:
    """A process table the collector reads instead of /proc."""

    def __init__(self) -> None:
        self.procs: dict[int, FakeProc] = {1: FakeProc(1, 1, 0, "init", ["/sbin/init"])}
        self.ticks = 100
        self.next_pid = 100

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        world = self

        def scan(pids: list[int], boot_time: float, cycle: Cycle, observe: Any) -> None:
            for pid in pids:
                p = world.procs[pid]
                key = (pid, p.start_ticks)
                start = p.start_ticks / CLK_TCK + boot_time
                observe(key, start, p.ppid, p.comm.encode(), "sleeping", 0, 0.0, 0, cycle)

        monkeypatch.setattr(collector_module, "list_pids", lambda procfs: sorted(world.procs))
        monkeypatch.setattr(collector_module, "scan_procfs", scan)
        monkeypatch.setattr(
            collector_module, "read_args_and_exe", lambda pid: (world.procs[pid].argv, None)
        )
        monkeypatch.setattr(
            collector_module,
            "current_key",
            lambda pid, procfs, boot: (pid, world.procs[pid].start_ticks),
        )
        monkeypatch.setattr(collector_module, "real_uid", lambda pid, owner, procfs: 0)


def record(kind: str, p: FakeProc, boot_time: float, *, gone: bool, **extra: Any) -> KernelRecord:
    """What the reader thread would make of ``p``'s event (``gone``: /proc unreadable)."""
    when = boot_time + p.start_ticks / CLK_TCK if kind == "fork" else boot_time + 1e6
    return KernelRecord(
        kind=kind,  # type: ignore[arg-type]
        pid=p.pid,
        ppid=p.ppid,
        start_ticks=None if gone or kind == "exit" else p.start_ticks,
        event_time=extra.pop("event_time", when),
        comm=None if gone or kind != "exec" else p.comm,
        exe=None,
        cmdline=None if gone or kind != "exec" else tuple(p.argv),
        uid=None if gone or kind != "exec" else 0,
        exit_code=0 if kind == "exit" else None,
        exit_signal=None,
        partial=gone and kind != "exit",
    )


class MergeMachine(RuleBasedStateMachine):
    """Kernel records and cycles in any order against one collector."""

    def __init__(self) -> None:
        super().__init__()
        self.monkeypatch = pytest.MonkeyPatch()
        self.world = World()
        self.world.install(self.monkeypatch)
        self.collector = ProcessCollector()
        self.boot = self.collector._boot_time  # the collector's clock origin, for the records
        self.late: list[KernelRecord] = []
        self.events: list[ProcessEvent] = []
        self.events += self.collector.collect().events  # the baseline

    def teardown(self) -> None:
        self.monkeypatch.undo()

    def _kernel(self, rec: KernelRecord, fate: str) -> None:
        if fate == "now":
            self.events += self.collector.apply_kernel([rec]).events
        elif fate == "late":
            self.late.append(rec)

    @rule(fate=st.sampled_from(["now", "late", "lost"]), gone=st.booleans())
    def fork(self, fate: str, gone: bool) -> None:
        world = self.world
        world.next_pid += 1
        world.ticks += 1
        parent = world.procs[1]
        p = FakeProc(world.next_pid, world.ticks, 1, parent.comm, list(parent.argv))
        world.procs[p.pid] = p
        self._kernel(record("fork", p, self.boot, gone=gone), fate)

    @precondition(lambda self: len(self.world.procs) > 1)
    @rule(data=st.data(), fate=st.sampled_from(["now", "late", "lost"]), gone=st.booleans())
    def exec_(self, data: st.DataObject, fate: str, gone: bool) -> None:
        pid = data.draw(st.sampled_from(sorted(p for p in self.world.procs if p != 1)))
        p = self.world.procs[pid]
        p.comm, p.argv = f"prog{len(self.events)}", [f"/bin/prog{len(self.events)}", "x"]
        self._kernel(record("exec", p, self.boot, gone=gone), fate)

    @precondition(lambda self: len(self.world.procs) > 1)
    @rule(data=st.data(), fate=st.sampled_from(["now", "late", "lost"]))
    def exit_(self, data: st.DataObject, fate: str) -> None:
        pid = data.draw(st.sampled_from(sorted(p for p in self.world.procs if p != 1)))
        p = self.world.procs.pop(pid)
        self._kernel(record("exit", p, self.boot, gone=True), fate)

    @precondition(lambda self: self.late)
    @rule(count=st.integers(1, 5))
    def deliver_late(self, count: int) -> None:
        batch, self.late = self.late[:count], self.late[count:]
        self.events += self.collector.apply_kernel(batch).events

    @rule()
    def cycle(self) -> None:
        self.events += self.collector.collect().events

    @invariant()
    def each_process_starts_once_then_stops_at_most_once(self) -> None:
        seen: dict[tuple[int, int], list[str]] = {}
        for e in self.events:
            key = (e.pid, round((e.start_time - self.boot) * CLK_TCK))
            seen.setdefault(key, []).append(e.event_type)
        for key, kinds in seen.items():
            assert kinds[0] == "start", (key, kinds)
            assert kinds.count("start") == 1, (key, kinds)
            assert kinds.count("stop") <= 1, (key, kinds)
            assert "stop" not in kinds[:-1], (key, kinds)

    @invariant()
    def kernel_events_say_so(self) -> None:
        for e in self.events:
            assert e.source in ("kernel", "cycle")
            if e.event_type == "exec":
                assert e.source == "kernel"
            if e.partial:
                assert None in (e.cmdline, e.exe, e.name, e.username)


_MergeCase: Any = MergeMachine.TestCase


class TestMerge(_MergeCase):  # type: ignore[misc]  # hypothesis's TestCase is Any
    """The merge property as ``make test`` runs it."""

    settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


del _MergeCase


def test_every_exec_becomes_an_exec_event_even_when_the_process_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exec record whose process was gone is sent as a partial exec (after a start)."""
    world = World()
    world.install(monkeypatch)
    collector = ProcessCollector()
    collector.collect()
    boot = collector._boot_time
    p = FakeProc(500, 500, 1, "sh", ["/bin/sh"])
    fork = collector.apply_kernel([record("fork", p, boot, gone=False)]).events
    batch = collector.apply_kernel([record("exec", p, boot, gone=True)])
    assert [e.event_type for e in fork] == ["start"]
    assert [(e.event_type, e.partial, e.source) for e in batch.events] == [("exec", True, "kernel")]
    assert batch.partial == 1
    wire = batch.events[0].to_wire()
    assert (wire["cmdline"], wire["exe"], wire["name"], wire["partial"]) == (None, None, None, True)
    stop = collector.apply_kernel([record("exit", p, boot, gone=True)]).events
    assert [(e.event_type, e.to_wire()["exit_code"]) for e in stop] == [("stop", 0)]


def test_a_cycle_stop_carries_null_exit_fields_and_its_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Protocol section 9: a stop from a cycle has exit_code and exit_signal null."""
    world = World()
    world.install(monkeypatch)
    world.procs[7] = FakeProc(7, 50, 1, "sleep", ["sleep", "9"])
    collector = ProcessCollector()
    collector.collect()
    del world.procs[7]
    (stop,) = collector.collect().events
    wire = stop.to_wire()
    assert (wire["event_type"], wire["source"], wire["exit_code"], wire["exit_signal"]) == (
        "stop",
        "cycle",
        None,
        None,
    )
    assert wire["event_time"] == wire["observed_at"]


def test_fork_without_exec_multiple_execs_and_pid_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork that never execs is a start and a stop with the parent's details; a process
    that execs three times gives three exec events; a reused pid is a new process."""
    world = World()
    world.install(monkeypatch)
    collector = ProcessCollector()
    collector.collect()
    boot = collector._boot_time
    apply = collector.apply_kernel

    worker = FakeProc(600, 10, 1, "init", ["/sbin/init"])
    events = apply([record("fork", worker, boot, gone=False)]).events
    events += apply([record("exit", worker, boot, gone=True)]).events
    assert [(e.event_type, e.cmdline) for e in events] == [
        ("start", ("/sbin/init",)),
        ("stop", ("/sbin/init",)),
    ]

    shell = FakeProc(601, 11, 1, "init", ["/sbin/init"])
    events = apply([record("fork", shell, boot, gone=False)]).events
    for program in ("sh", "env", "python3"):
        shell.comm, shell.argv = program, [f"/usr/bin/{program}"]
        events += apply([record("exec", shell, boot, gone=False)]).events
    assert [(e.event_type, e.name) for e in events] == [
        ("start", "init"),
        ("exec", "sh"),
        ("exec", "env"),
        ("exec", "python3"),
    ]

    reused = FakeProc(600, 40, 1, "init", ["/sbin/init"])  # pid 600 again, a new process
    events = apply([record("fork", reused, boot, gone=False)]).events
    assert [(e.event_type, e.pid) for e in events] == [("start", 600)]
    assert events[0].start_time > worker.start_ticks / CLK_TCK + boot
