"""The kernel reader in a child process: it reports a storm resolved, says why it cannot
run, and never outlives its stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from procmond.collect.kernel import KernelRecord, KernelUnavailable
from procmond.collect.kernel_process import KernelProcess

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the kernel's process events need root")


class Collected:
    """Records delivered from the reading thread; an event once ``want`` execs arrived."""

    def __init__(self, marker: str, want: int) -> None:
        self.marker, self.want = marker, want
        self.records: list[KernelRecord] = []
        self.lock = threading.Lock()
        self.enough = threading.Event()

    def deliver(self, batch: list[KernelRecord]) -> None:
        with self.lock:
            self.records.extend(batch)
            if len(self.execs()) >= self.want:
                self.enough.set()

    def execs(self) -> list[KernelRecord]:
        """Execs of the shell's children (a partial exec has no ppid: found by its fork)."""
        children = {r.pid for r in self.records if r.kind == "fork" and r.ppid == self.shell}
        return [r for r in self.records if r.kind == "exec" and r.pid in children]

    shell = -1


@root_only
def test_a_storm_is_reported_by_the_child_resolved() -> None:
    """200 `/bin/true` from a separate shell: every exec is delivered, most resolved."""
    marker = f"kp-{os.getpid()}"
    got = Collected(marker, 200)
    source = KernelProcess(got.deliver)
    try:
        source.start()
    except KernelUnavailable as exc:  # pragma: no cover - CI runs as root in the host namespaces
        pytest.skip(f"kernel refused: {exc.reason}")
    try:
        storm = subprocess.Popen(
            ["sh", "-c", f"for i in $(seq 200); do /bin/true {marker} $i; done"]
        )
        got.shell = storm.pid
        assert storm.wait(timeout=60) == 0
        assert got.enough.wait(timeout=30), (len(got.execs()), source.lost, len(got.records))
    finally:
        source.stop()
    execs = [r for r in got.execs() if (r.cmdline or ("",))[0] != "seq"]
    resolved = [r for r in execs if r.cmdline and marker in r.cmdline]
    # How many are resolved depends on scheduling (the benchmark holds the 90 % target,
    # bench/bench_kernel.py); half is far below any run seen here, and far above a bug.
    assert len(resolved) >= 0.5 * 200, (len(resolved), len(execs))
    # Partial: the process was gone before every detail was read; the unread ones are null.
    assert all(None in (r.cmdline, r.exe, r.comm, r.uid) for r in execs if r.partial)
    assert source.received >= len(execs)
    assert not source.running


def test_the_childs_reason_is_kernel_unavailable() -> None:
    """A child that cannot listen says why on its first line: KernelUnavailable with it."""
    says = 'import sys; print(\'{"unavailable": "EPERM: not allowed (test)"}\')'
    source = KernelProcess(lambda batch: None, command=[sys.executable, "-c", says])
    with pytest.raises(KernelUnavailable) as refused:
        source.start()
    assert refused.value.reason == "EPERM: not allowed (test)"
    assert not source.running


def test_a_silent_child_is_ended_and_reported() -> None:
    """A child that says nothing within the start timeout is killed; the reason says so."""
    silent = [sys.executable, "-c", "import time; time.sleep(60)"]
    source = KernelProcess(lambda batch: None, command=silent, start_timeout=0.5)
    with pytest.raises(KernelUnavailable) as refused:
        source.start()
    assert "did not start" in refused.value.reason


@root_only
def test_the_child_dies_with_a_killed_daemon_even_while_busy() -> None:
    """SIGKILL the process that started the reader while a storm keeps the child busy: the
    child still exits (its death signal may land on a busy thread; the main one wakes)."""
    code = (
        "import sys, time\n"
        "from procmond.collect.kernel_process import KernelProcess\n"
        "k = KernelProcess(lambda batch: None)\n"
        "k.start()\n"
        "print(k._child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    line = parent.stdout.readline()
    if not line.strip().isdigit():  # pragma: no cover - the kernel refused (not the host netns)
        parent.kill()
        pytest.skip("the kernel source did not start")
    child = int(line)
    storm = subprocess.Popen(["sh", "-c", "for i in $(seq 300); do /bin/true busy; done"])
    parent.kill()
    parent.wait(10)
    storm.wait(60)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.05)  # another process's exit: nothing to wait on but its /proc entry
    alive = os.path.exists(f"/proc/{child}")
    if alive:  # leave nothing behind even when failing
        os.kill(child, 9)
    assert not alive


@root_only
@pytest.mark.parametrize("attempt", range(5))
def test_the_child_ends_on_sigterm_while_idle(attempt: int) -> None:
    """SIGTERM (what stop() and the death signal send) ends an idle child within seconds:
    its handler takes no lock (an Event.set in it deadlocked against the main thread's wait)."""
    source = KernelProcess(lambda batch: None)
    source.start()
    child = source._child
    assert child is not None
    try:
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=5) == 0
    finally:
        source.stop()
