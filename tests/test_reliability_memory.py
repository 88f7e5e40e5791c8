"""Reliability of the integrated daemon parts on the in-memory bus (issue 5, faults 6 and 8).

Deadlines: a request whose deadline passes while it waits in the mailbox is
answered DEADLINE_EXCEEDED and never executed; one whose execution outlives
its deadline is answered TIMEOUT, and the next request is still served.

The stateful test drives actor, lifecycle, registration, RPC service and
pipeline (with a real, small write-ahead log) through random interleavings
of requests, bus loss and return, collection cycles, registration answers
and shutdown, and checks after every step that every request was answered
exactly once, every state change is one fsm/ declares, no event the fake
collector produced is lost, heartbeats only count up, and the mailbox never
passed its bound.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from memory_harness import CID, FakeCollector, Parts, make_ready, running_parts
from reliability_support import record

from fsm import Activity, State, Trigger, effects, is_live, target
from procmond.collect.collector import CycleResult
from procmond.collect.process_event import ProcessEvent
from procmond.daemon.actor import ProcmondMonitorCollector
from procmond.daemon.messages import CollectTick, UpdateConfig
from procmond.daemon.registration import RegistrationSettings

# -- deadlines (fault 6) ----------------------------------------------------------


async def test_expired_requests_are_not_executed_and_a_slow_actor_times_out(
    tmp_path: Path,
) -> None:
    """A cycle that hangs holds UpdateConfig at the cycle boundary past its deadline: TIMEOUT,
    and HealthCheck is still served; a request queued behind it whose deadline passes is
    DEADLINE_EXCEEDED and never applied; once the cycle ends the waiting update applies."""
    fake = FakeCollector()
    async with running_parts(tmp_path, collector=fake) as parts:
        await make_ready(parts)
        client = parts.client
        await parts.actor.collection.cycles.reach(1)  # the baseline ran
        fake.gate.clear()
        fake.entered.clear()
        parts.actor.tell(CollectTick(), priority=True)
        await fake.wait_entered()

        slow = await client.call("UpdateConfig", {"changes": {"max_processes": 5}}, deadline_s=0.3)
        assert slow["error"]["code"] == "TIMEOUT", slow
        health = await client.call("HealthCheck")
        assert health["status"] == "Success"

        # Straight into the mailbox, so it is surely ahead of the next request.
        taken = parts.actor.mailbox.taken.value
        waiting = parts.actor.offer(
            UpdateConfig({"max_processes": 6}), deadline=time.monotonic() + 10
        )
        await parts.actor.mailbox.taken.reach(taken + 1)  # taken: waiting at the boundary
        queued = await client.call(
            "UpdateConfig", {"changes": {"max_processes": 7}}, deadline_s=0.3
        )
        assert queued["error"]["code"] == "DEADLINE_EXCEEDED", queued["error"]
        past = await client.call("UpdateConfig", {"changes": {"max_processes": 8}}, deadline_s=-1)
        assert past["error"]["code"] == "DEADLINE_EXCEEDED", past

        fake.gate.set()
        applied = await asyncio.wait_for(waiting, 10)
        assert applied.error is None, applied
        assert applied.payload is not None
        assert applied.payload["config_version"] == 2
        assert parts.actor.config.max_processes == 6  # 5 timed out, 7 and 8 never ran
        after = await client.call("HealthCheck")
        assert after["payload"]["config_version"] == 2
    record(
        "deadlines",
        injected=3,
        requests_sent=6,
        requests_answered=6,
        timeout=1,
        deadline_exceeded=2,
        config_version_after=2,
    )


# -- the stateful test (fault 8) ----------------------------------------------------

#: Small enough that a cycle or two with the bus down fill it (events are ~350 bytes).
SMALL_WAL = 6 * 1024
STATS: dict[str, int] = {
    "examples": 0,
    "steps": 0,
    "requests": 0,
    "bus_losses": 0,
    "events": 0,
    "wal_full": 0,
}


class RecordingCollector(FakeCollector):
    """A FakeCollector that remembers every event it handed out, and the lifecycle state
    each cycle started in."""

    def __init__(self) -> None:
        super().__init__(events_per_cycle=3)
        self.produced: list[ProcessEvent] = []
        self.actor: ProcmondMonitorCollector | None = None
        self.started_in: list[State] = []

    def collect(self) -> CycleResult:
        if self.actor is not None:
            self.started_in.append(self.actor.state)
        result = super().collect()
        self.produced.extend(result.events)
        return result


class DaemonMachine(RuleBasedStateMachine):
    """The daemon's parts under random inputs; one asyncio.Runner per example."""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.tmp = Path(tempfile.mkdtemp(prefix="pmd-sm-"))
        self.collector = RecordingCollector()
        self.cm: AbstractAsyncContextManager[Parts] = running_parts(
            self.tmp,
            collector=self.collector,
            wal_max_bytes=SMALL_WAL,
            registration=RegistrationSettings(
                attempt_timeout_s=0.2, backoff_initial_s=0.001, backoff_max_s=0.002
            ),
        )
        self.parts = self.runner.run(self.cm.__aenter__())
        self.collector.actor = self.parts.actor
        self.moves: list[tuple[State, State, Trigger]] = []
        self.parts.actor.add_state_listener(lambda o, n, t: self.moves.append((o, n, t)))
        self.sends: dict[str, int] = {}
        self.bodies: list[dict[str, Any]] = []
        self.shut_down = False
        STATS["examples"] += 1

    # -- helpers ------------------------------------------------------------------

    def _settle(self) -> None:
        self.runner.run(self._settle_async())
        STATS["steps"] += 1

    async def _settle_async(self, timeout: float = 5.0) -> None:
        """Run the loop until every request is answered and the flusher is idle (bounded)."""
        parts = self.parts
        async with asyncio.timeout(timeout):
            while True:
                await asyncio.sleep(0.001)
                answered = self._answer_counts()
                done = all(answered.get(rid, 0) >= n for rid, n in self.sends.items())
                idle = (
                    not parts.actor.collection.running
                    and not parts.actor.publisher.publishing
                    and (parts.broker.down or parts.pipeline.pending == 0)
                )
                if done and idle:
                    return

    def _answer_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for message in self.parts.client.on(f"control.rpc.response.{self.parts.client.client_id}"):
            counts[message["request_id"]] = counts.get(message["request_id"], 0) + 1
        return counts

    async def _tick(self) -> None:
        actor = self.parts.actor
        before = actor.collection.cycles.value
        if actor.tell(CollectTick()):
            await actor.collection.cycles.reach(before + 1)

    async def _set_down(self, down: bool) -> None:
        self.parts.broker.set_down(down)

    def _send(self, body: dict[str, Any]) -> None:
        self.sends[body["request_id"]] = self.sends.get(body["request_id"], 0) + 1
        self.runner.run(self.parts.client.send(body))
        STATS["requests"] += 1

    # -- rules ----------------------------------------------------------------------

    @precondition(lambda self: not self.parts.broker.down and not self.shut_down)
    @rule(
        operation=st.sampled_from(
            ["HealthCheck", "UpdateConfig", "UpdateConfig-invalid", "Unknown", "Expired"]
        ),
        value=st.integers(0, 20),
    )
    def request(self, operation: str, value: int) -> None:
        """Any request but GracefulShutdown, while the bus is up."""
        payload: Any = None
        deadline_s = 5.0
        if operation == "UpdateConfig":
            payload = {"changes": {"max_processes": value}}
        elif operation == "UpdateConfig-invalid":
            operation, payload = "UpdateConfig", {"changes": {"max_processes": -value - 1}}
        elif operation == "Unknown":
            operation = "Rollback"
        elif operation == "Expired":
            operation, payload, deadline_s = "UpdateConfig", {"changes": {"max_processes": 99}}, -1
        body = self.parts.client.request(
            operation, payload, request_id=uuid.uuid4().hex, deadline_s=deadline_s
        )
        self.bodies.append(body)
        self._send(body)
        self._settle()

    @precondition(lambda self: not self.parts.broker.down and self.bodies and not self.shut_down)
    @rule(index=st.integers(0, 1000))
    def repeat(self, index: int) -> None:
        """The same request id again: answered again (with the first answer)."""
        self._send(self.bodies[index % len(self.bodies)])
        self._settle()

    @precondition(lambda self: not self.parts.broker.down and not self.shut_down)
    @rule()
    def shutdown(self) -> None:
        """GracefulShutdown, then what the daemon does after the drain."""
        body = self.parts.client.request(
            "GracefulShutdown", {"graceful_timeout_ms": 2000}, request_id=uuid.uuid4().hex
        )
        self._send(body)
        self._settle()
        actor = self.parts.actor
        # The drain ends by itself (the cycle, the log and the flush are bounded): the
        # daemon deregisters, stops listening and stops; nothing is answered afterwards.
        self.runner.run(actor.entered[State.DEREGISTERED].reach(1, timeout=10))
        self.shut_down = True

    @precondition(lambda self: not self.parts.broker.down)
    @rule()
    def bus_lost(self) -> None:
        """Redis goes away (on the loop, where a real bus reports its status)."""
        self.runner.run(self._set_down(True))
        STATS["bus_losses"] += 1
        self._settle()

    @precondition(lambda self: self.parts.broker.down)
    @rule()
    def bus_back(self) -> None:
        """Redis comes back."""
        self.runner.run(self._set_down(False))
        self._settle()

    @rule(events=st.integers(0, 12))
    def cycle(self, events: int) -> None:
        """A collection tick producing ``events`` events (refused once draining)."""
        self.collector.events_per_cycle = events
        self.runner.run(self._tick())
        if self.parts.pipeline.unlogged:
            STATS["wal_full"] += 1
        self._settle()

    @precondition(lambda self: not self.parts.broker.down)
    @rule(mode=st.sampled_from(["accept", "reject", "ignore"]), late=st.booleans())
    def registration_answer(self, mode: str, late: bool) -> None:
        """Answer the oldest held Register (or drop it, so it times out); or answer the first
        Register again, whose attempt is long over (a stale answer its guard must refuse)."""
        agent = self.parts.agent
        status = "Accepted" if mode == "accept" else "Rejected"
        request = None if late else agent.take_held()
        if request is not None and mode != "ignore":
            self.runner.run(agent.send_reply(request, status))
        elif late and len(agent.registers()) > 1 and mode != "ignore":
            self.runner.run(agent.send_reply(agent.registers()[0], status))
        self._settle()

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def every_request_answered_exactly_once(self) -> None:
        """Each send of a request id got exactly one answer, and repeats the same one."""
        topic = f"control.rpc.response.{self.parts.client.client_id}"
        answers: dict[str, list[dict[str, Any]]] = {}
        for message in self.parts.client.on(topic):
            answers.setdefault(message["request_id"], []).append(message)
        assert set(answers) == set(self.sends)
        for request_id, count in self.sends.items():
            got = answers[request_id]
            assert len(got) == count, (request_id, got)
            assert all(g == got[0] for g in got), got

    @invariant()
    def state_changes_follow_the_fsm(self) -> None:
        """Every move is one the lifecycle table declares."""
        for old, new, trigger in self.moves:
            assert target(old, trigger) is new, (old, trigger, new)

    @invariant()
    def no_event_lost(self) -> None:
        """Streams + log (buffer) + held events == everything produced, seq 1..n once each."""
        pipeline = self.parts.pipeline
        entries: list[dict[str, Any]] = [
            fields
            for stream in ("events.process.start", "events.process.stop", "events.process.modify")
            for _, fields in self.parts.broker.stream(stream)
        ]
        entries += [
            {k: v.decode() if isinstance(v, bytes) else v for k, v in entry.fields.items()}
            for entry in pipeline._buffer
        ]
        seqs = sorted(int(str(f["seq"])) for f in entries)
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        pids = [json.loads(str(f["event"]))["pid"] for f in entries]
        pids += [event.pid for event in pipeline._unlogged]
        assert sorted(pids) == sorted(e.pid for e in self.collector.produced)

    @invariant()
    def no_cycle_starts_where_the_state_does_not_collect(self) -> None:
        """No cycle starts in draining or deregistered (the table's ``collect`` activity)."""
        assert all(Activity.COLLECT in effects(s).activities for s in self.collector.started_in)

    @invariant()
    def no_heartbeat_before_ready(self) -> None:
        """Heartbeats come only after the first ``ready`` announcement, in ready or draining."""
        received = self.parts.client.received
        status, heartbeat = f"control.health.status.{CID}", f"control.health.heartbeat.{CID}"
        first_ready = next(
            (i for i, (ch, m) in enumerate(received) if ch == status and m["state"] == "ready"),
            None,
        )
        beats = [(i, m) for i, (ch, m) in enumerate(received) if ch == heartbeat]
        if beats:
            assert self.parts.actor.entered[State.READY].value > 0
            assert first_ready is None or beats[0][0] > first_ready
        assert {m["state"] for _, m in beats} <= {"ready", "draining"}

    @invariant()
    def inbox_subscribed_in_every_live_state(self) -> None:
        """While the state is live, the collector holds its request subscription."""
        state = self.parts.actor.state
        if is_live(state):
            assert self.parts.bus.subscribed(f"control.collector.{CID}"), state

    @invariant()
    def one_announcement_per_announced_state_entered(self) -> None:
        """Each entry into an announced state is published once, in order (or failed while
        the bus was down); nothing else is announced."""
        entered = [n.value for _o, n, _t in self.moves if effects(n).announced]
        received = [m["state"] for m in self.parts.client.on(f"control.health.status.{CID}")]
        assert len(received) + self.parts.actor.publisher.announcements_failed == len(entered)
        remaining = iter(entered)
        assert all(state in remaining for state in received), (received, entered)

    @invariant()
    def heartbeats_count_up(self) -> None:
        """Heartbeat sequence numbers strictly increase."""
        beats = self.parts.client.on(f"control.health.heartbeat.{CID}")
        sequences = [b["sequence"] for b in beats]
        assert sequences == sorted(set(sequences)), sequences

    @invariant()
    def mailbox_within_bound(self) -> None:
        """The mailbox never held more requests than its size."""
        assert self.parts.actor.mailbox.high_water <= 100

    def teardown(self) -> None:
        STATS["events"] += len(self.collector.produced)
        try:
            self.parts.broker.set_down(False)
            self.runner.run(self.cm.__aexit__(None, None, None))
        finally:
            self.runner.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


_MachineTestCase: Any = DaemonMachine.TestCase


class TestDaemonMachine(_MachineTestCase):  # type: ignore[misc]  # hypothesis's TestCase is Any
    """The stateful test as ``make test`` runs it."""

    settings = settings(max_examples=100, stateful_step_count=25, deadline=None)


class TestDaemonMachineSoak(_MachineTestCase):  # type: ignore[misc]  # as above
    """The stateful test as ``make soak`` runs it."""

    pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]
    settings = settings(max_examples=2000, stateful_step_count=40, deadline=None)


del _MachineTestCase  # not a test of its own: pytest collects every TestCase in the module


@pytest.fixture(scope="module", autouse=True)
def _stateful_figures() -> Iterator[None]:
    """Record the stateful test's figures once the module's tests ran."""
    yield
    if STATS["examples"]:
        record("stateful-memory", injected=STATS["bus_losses"], **STATS)
