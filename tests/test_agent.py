"""The reference agent: the pure tracker, the bus layer on MemoryBus, and one real run."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e_support import daemon, new_id
from hypothesis import given
from hypothesis import strategies as st

from procmond.agent.main import run_agent
from procmond.agent.schemas import HeartbeatFields
from procmond.agent.service import (
    HEARTBEAT_PATTERN,
    Agent,
    AgentEvent,
    EventKind,
    Liveness,
    Registration,
    Tracker,
)
from procmond.agent.view import LiveTable, event_line, table_lines
from procmond.bus.memory import MemoryBroker, MemoryBus
from procmond.bus.redis import RedisBus
from procmond.client import RpcClient
from procmond.embedded import RedisServer
from procmond.topics import REGISTRATION_PATTERN, registration_topic, response_topic

# -- helpers -------------------------------------------------------------------


def beat(cid: str, boot: str, seq: int, **extra: Any) -> HeartbeatFields:
    """A decoded heartbeat."""
    return HeartbeatFields(collector_id=cid, boot_id=boot, sequence=seq, state="ready", **extra)


def reg(cid: str, boot: str = "boot-1", interval_ms: int = 1000) -> Registration:
    """A validated Register."""
    return Registration(cid, boot, interval_ms, "host", 42, "0.1.0")


def kinds(tracker: Tracker) -> list[tuple[EventKind, str | None]]:
    """The pending events as (kind, collector_id), consumed."""
    return [(e.kind, e.collector_id) for e in tracker.take_events()]


def ready_tracker(*ids: str, interval_ms: int = 1000) -> Tracker:
    """A tracker where each id registered at t=0 and heartbeat 1 arrived at t=0."""
    tracker = Tracker()
    for cid in ids:
        tracker.register(reg(cid, interval_ms=interval_ms), 0.0)
        tracker.heartbeat(cid, beat(cid, "boot-1", 1), 0.0)
    tracker.take_events()
    return tracker


# -- the pure core: registration ----------------------------------------------


def test_register_accepts_and_assigns_the_configured_interval() -> None:
    """Register returns the assigned interval and reports one registered event."""
    tracker = Tracker(assigned_interval_ms=250)
    assert tracker.register(reg("c1", interval_ms=30_000), 5.0) == 250
    record = tracker.collectors["c1"]
    assert (record.state, record.interval_s, record.registered) == ("registered", 0.25, True)
    assert kinds(tracker) == [(EventKind.REGISTERED, "c1")]


def test_register_without_assignment_keeps_the_collectors_interval() -> None:
    """Without --heartbeat-interval-ms the answer is null and the proposed interval is used."""
    tracker = Tracker()
    assert tracker.register(reg("c1", interval_ms=2000), 0.0) is None
    assert tracker.collectors["c1"].interval_s == 2.0


def test_reregistration_with_a_new_boot_resets_the_counters() -> None:
    """A new boot_id replaces the old record: sequence and lost start again."""
    tracker = ready_tracker("c1")
    tracker.heartbeat("c1", beat("c1", "boot-1", 4), 1.0)
    assert tracker.collectors["c1"].lost == 2
    tracker.register(reg("c1", boot="boot-2"), 2.0)
    record = tracker.collectors["c1"]
    assert (record.boot_id, record.sequence, record.lost, record.heartbeats) == (
        "boot-2",
        0,
        0,
        0,
    )
    events = tracker.take_events()
    assert events[-1].kind is EventKind.REGISTERED
    assert events[-1].data["previous_boot_id"] == "boot-1"
    tracker.heartbeat("c1", beat("c1", "boot-1", 5), 2.1)  # a straggler of the old boot
    assert (tracker.collectors["c1"].boot_id, tracker.stale_total) == ("boot-2", 1)
    tracker.heartbeat("c1", beat("c1", "boot-2", 1), 2.2)
    assert (tracker.collectors["c1"].sequence, tracker.collectors["c1"].lost) == (1, 0)


def test_reregistration_of_the_same_boot_keeps_counting() -> None:
    """The same boot registering again (bus came back) keeps its sequence and lost count."""
    tracker = ready_tracker("c1")
    tracker.heartbeat("c1", beat("c1", "boot-1", 3), 1.0)
    tracker.register(reg("c1"), 2.0)
    record = tracker.collectors["c1"]
    assert (record.sequence, record.lost) == (3, 1)
    assert tracker.take_events()[-1].data["re_registration"] is True


def test_deregister_stops_watching() -> None:
    """A deregistered collector is reported once and never becomes late."""
    tracker = ready_tracker("c1")
    assert tracker.deregister("c1", "boot-1", 1.0) is None
    assert kinds(tracker) == [(EventKind.DEREGISTERED, "c1")]
    tracker.tick(100.0)
    assert tracker.collectors["c1"].state == "deregistered"
    assert kinds(tracker) == []
    assert tracker.deregister("c1", "other-boot", 1.0) is not None


def test_status_announcements_change_the_lifecycle() -> None:
    """ready / draining / deregistered announcements move the shown state, each reported."""
    tracker = Tracker()
    tracker.register(reg("c1"), 0.0)
    doc = {"collector_id": "c1", "boot_id": "boot-1", "timestamp": "x"}
    tracker.status("c1", {**doc, "state": "ready", "heartbeat_interval_ms": 500}, 0.1)
    assert tracker.collectors["c1"].interval_s == 0.5
    tracker.status("c1", {**doc, "state": "draining"}, 0.2)
    tracker.status("c1", {**doc, "state": "deregistered"}, 0.3)
    assert kinds(tracker)[1:] == [
        (EventKind.STATE, "c1"),
        (EventKind.STATE, "c1"),
        (EventKind.DEREGISTERED, "c1"),
    ]
    tracker.status("c1", {"collector_id": "other", "boot_id": "b", "state": "ready"}, 0.4)
    assert tracker.malformed_total == 1


def test_a_draining_announcement_after_the_deregister_is_stale() -> None:
    """The Deregister request may overtake its boot's `draining` announcement on the bus (two
    connections): the late `draining` does not bring a deregistered collector back."""
    tracker = ready_tracker("c1")
    doc = {"collector_id": "c1", "boot_id": "boot-1", "timestamp": "x"}
    assert tracker.deregister("c1", "boot-1", 1.0) is None
    tracker.status("c1", {**doc, "state": "draining"}, 1.1)
    tracker.status("c1", {**doc, "state": "deregistered"}, 1.2)
    assert kinds(tracker) == [(EventKind.DEREGISTERED, "c1")]
    assert tracker.collectors["c1"].state == "deregistered"


def test_a_heartbeat_from_an_unknown_collector_adopts_it() -> None:
    """An agent started after its collectors learns of them from heartbeats, without false loss."""
    tracker = Tracker()
    tracker.heartbeat("c9", beat("c9", "b", 500), 1.0)
    record = tracker.collectors["c9"]
    assert (record.state, record.sequence, record.lost, record.registered) == (
        "ready",
        500,
        0,
        False,
    )
    assert kinds(tracker) == [(EventKind.DISCOVERED, "c9")]


def test_malformed_heartbeats_are_counted_not_applied() -> None:
    """Wrong channel id, bad JSON, wrong types and sequence 0 are dropped and counted."""
    tracker = Tracker()
    tracker.heartbeat("c1", beat("c2", "b", 1), 0.0)
    tracker.heartbeat("c1", beat("c1", "b", 0), 0.0)
    tracker.heartbeat_bytes("c1", b"not json", 0.0)
    tracker.heartbeat_bytes("c1", b'{"collector_id":"c1","boot_id":"b","sequence":"1"}', 0.0)
    tracker.heartbeat_bytes("c1", b"[1, 2]", 0.0)
    assert (tracker.malformed_total, tracker.collectors) == (5, {})


def test_the_capture_mode_is_reported_when_first_heard_and_when_it_changes() -> None:
    """A heartbeat's capture_mode (protocol section 9) is kept; the first of a boot and each
    change is one capture_mode event; repeats, heartbeats without one and the `cycle` of a
    draining collector (it stopped collecting) say nothing."""
    tracker = ready_tracker("c1")
    assert tracker.collectors["c1"].capture_mode is None
    tracker.heartbeat("c1", beat("c1", "boot-1", 2, metrics={"capture_mode": "cycle"}), 1.0)
    tracker.heartbeat("c1", beat("c1", "boot-1", 3, metrics={"capture_mode": "cycle"}), 2.0)
    tracker.heartbeat("c1", beat("c1", "boot-1", 4, metrics={"capture_mode": "kernel"}), 3.0)
    events = tracker.take_events()
    assert [(e.kind, e.collector_id, e.data) for e in events] == [
        (EventKind.CAPTURE_MODE, "c1", {"capture_mode": "cycle", "previous": None}),
        (EventKind.CAPTURE_MODE, "c1", {"capture_mode": "kernel", "previous": "cycle"}),
    ]
    assert tracker.collectors["c1"].capture_mode == "kernel"
    draining = beat("c1", "boot-1", 5, metrics={"capture_mode": "cycle"})
    tracker.heartbeat("c1", draining.model_copy(update={"state": "draining"}), 3.5)
    assert kinds(tracker) == [(EventKind.STATE, "c1")]  # stopped collecting: no fallback
    tracker.register(reg("c1", boot="boot-2"), 4.0)
    tracker.heartbeat("c1", beat("c1", "boot-2", 1, metrics={"capture_mode": "kernel"}), 4.1)
    assert kinds(tracker)[-1] == (EventKind.CAPTURE_MODE, "c1")  # a new boot: heard anew


# -- the pure core: liveness ---------------------------------------------------


def test_late_then_failed_then_recovered() -> None:
    """Silent past 1.1 intervals is late, past 3 missed intervals failed; a heartbeat recovers."""
    tracker = ready_tracker("c1")  # interval 1 s, last heartbeat at t=0
    tracker.tick(1.05)
    assert (tracker.collectors["c1"].state, kinds(tracker)) == ("ready", [])
    tracker.tick(1.15)
    assert (tracker.collectors["c1"].state, kinds(tracker)) == ("late", [(EventKind.LATE, "c1")])
    tracker.tick(3.05)
    assert (tracker.collectors["c1"].state, kinds(tracker)) == ("late", [])
    tracker.tick(3.15)
    assert (tracker.collectors["c1"].state, kinds(tracker)) == (
        "failed",
        [(EventKind.FAILED, "c1")],
    )
    tracker.tick(10.0)
    assert kinds(tracker) == []  # failed is reported once
    tracker.heartbeat("c1", beat("c1", "boot-1", 11), 10.5)
    events = tracker.take_events()
    assert [e.kind for e in events] == [EventKind.LOST_HEARTBEATS, EventKind.RECOVERED]
    assert events[1].data == {"previous": "failed"}
    assert tracker.collectors["c1"].state == "ready"


def test_a_registered_collector_that_never_heartbeats_fails() -> None:
    """The liveness clock starts at registration: no heartbeat at all still fails."""
    tracker = Tracker()
    tracker.register(reg("c1"), 0.0)
    tracker.tick(4.0)
    assert tracker.collectors["c1"].liveness is Liveness.FAILED


def test_lost_heartbeats_are_counted_from_gaps() -> None:
    """Each gap adds the missing numbers, with one event per gap; repeats are ignored."""
    tracker = ready_tracker("c1")
    for seq in (2, 5, 5, 4, 6, 10):
        tracker.heartbeat("c1", beat("c1", "boot-1", seq), float(seq))
    record = tracker.collectors["c1"]
    assert (record.lost, record.sequence, record.duplicates) == (5, 10, 2)
    lost = [e.data["missing"] for e in tracker.take_events() if e.kind is EventKind.LOST_HEARTBEATS]
    assert lost == [2, 3]


@given(
    gaps=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=60),
    repeats=st.lists(st.booleans(), max_size=60),
    adopted=st.booleans(),
)
def test_lost_equals_the_missing_sequence_numbers(
    gaps: list[int], repeats: list[bool], adopted: bool
) -> None:
    """For any increasing stream with gaps and repeats, lost = numbers never received."""
    tracker = Tracker()
    if not adopted:
        tracker.register(reg("c1"), 0.0)
    sequences: list[int] = []
    seq = 0
    for i, gap in enumerate(gaps):
        seq += gap
        sequences.append(seq)
        if i < len(repeats) and repeats[i]:
            sequences.append(seq)  # a repeat changes nothing
    for t, number in enumerate(sequences):
        tracker.heartbeat("c1", beat("c1", "boot-1", number), float(t))
    first = sequences[0] if adopted else 1
    expected = len(set(range(first, seq + 1)) - set(sequences))
    assert tracker.collectors["c1"].lost == expected
    reported = sum(e.data["missing"] for e in tracker.events if e.kind is EventKind.LOST_HEARTBEATS)
    assert reported == expected


# -- the pure core: mass-failure damping ----------------------------------------


def test_most_collectors_silent_at_once_is_a_bus_problem_not_failures() -> None:
    """3 of 4 going silent together reports bus_suspect once and fails none of them."""
    tracker = ready_tracker("a", "b", "c", "d")
    for t in (1.0, 2.0, 3.0, 4.0):
        tracker.heartbeat("d", beat("d", "boot-1", int(t) + 1), t)
    tracker.tick(1.2)
    assert kinds(tracker) == [(EventKind.BUS_SUSPECT, None)]
    for t in (2.0, 3.5, 5.0):
        tracker.tick(t)
    assert kinds(tracker) == []
    assert {r.state for r in tracker.collectors.values()} == {"suspect", "ready"}
    assert tracker.bus_suspect
    for cid in "abc":  # the bus is back: they all heartbeat again
        tracker.heartbeat(cid, beat(cid, "boot-1", 6), 5.1)
    tracker.tick(5.2)
    events = tracker.take_events()
    assert [e.kind for e in events] == [
        EventKind.LOST_HEARTBEATS,
        EventKind.LOST_HEARTBEATS,
        EventKind.LOST_HEARTBEATS,
        EventKind.BUS_RECOVERED,
    ]
    assert {r.state for r in tracker.collectors.values()} == {"ready"}


def test_after_a_bus_problem_the_still_silent_get_a_grace_period_then_fail() -> None:
    """A collector still silent when the bus recovers fails only after a fresh 3 intervals."""
    tracker = ready_tracker("a", "b", "c")
    tracker.tick(1.2)
    assert kinds(tracker) == [(EventKind.BUS_SUSPECT, None)]
    for cid in "ab":
        tracker.heartbeat(cid, beat(cid, "boot-1", 2), 10.0)
    tracker.tick(10.1)
    assert kinds(tracker) == [(EventKind.BUS_RECOVERED, None)]
    for t in (11.0, 12.0, 13.0):
        for cid in "ab":
            tracker.heartbeat(cid, beat(cid, "boot-1", int(t) - 8), t)
        tracker.tick(t + 0.3)
    assert kinds(tracker) == [(EventKind.LATE, "c"), (EventKind.FAILED, "c")]


def test_a_minority_going_silent_fails_normally() -> None:
    """1 of 4 silent is that collector's problem: late, then failed, no bus_suspect."""
    tracker = ready_tracker("a", "b", "c", "d")
    for t in (1.0, 2.0, 3.0):
        for cid in "abc":
            tracker.heartbeat(cid, beat(cid, "boot-1", int(t) + 1), t)
        tracker.tick(t + 0.2)
    assert kinds(tracker) == [(EventKind.LATE, "d"), (EventKind.FAILED, "d")]
    assert not tracker.bus_suspect


def test_two_collectors_are_too_few_for_damping() -> None:
    """With fewer than 3 watched collectors, silence is judged one by one."""
    tracker = ready_tracker("a", "b")
    tracker.tick(3.2)
    assert sorted(kinds(tracker)) == [(EventKind.FAILED, "a"), (EventKind.FAILED, "b")]


def test_the_agents_own_disconnection_suspends_failure_verdicts() -> None:
    """While the agent's bus is down nobody fails; after it returns they get a grace period."""
    tracker = ready_tracker("a")
    tracker.tick(0.5, bus_connected=False)
    assert kinds(tracker) == [(EventKind.BUS_SUSPECT, None)]
    tracker.tick(9.0, bus_connected=False)
    tracker.tick(9.5)
    assert kinds(tracker) == [(EventKind.BUS_RECOVERED, None)]
    tracker.tick(12.0)
    assert kinds(tracker) == [(EventKind.LATE, "a")]


# -- output -------------------------------------------------------------------------


def test_event_lines_are_json_with_kind_and_details() -> None:
    """A JSON line carries timestamp, event, collector_id and the details."""
    line = event_line(AgentEvent(EventKind.LATE, "c1", {"silent_for_s": 1.2}), "T")
    assert json.loads(line) == {
        "timestamp": "T",
        "event": "late",
        "collector_id": "c1",
        "silent_for_s": 1.2,
    }


def test_table_shows_the_worst_first_and_fits_the_height() -> None:
    """Failed rows come first; what does not fit is summarised."""
    tracker = ready_tracker("a", "b", "c", "d", "e")
    tracker.collectors["d"].liveness = Liveness.FAILED
    lines = table_lines(list(tracker.collectors.values()), 1.0, height=6, header="H")
    assert lines[0] == "H"
    assert lines[1].split()[:2] == ["ID", "STATE"]
    assert lines[2].split()[:2] == ["d", "failed"]
    assert lines[-1] == "... 3 more"


def test_table_shows_each_collectors_capture_mode() -> None:
    """The CAPTURE column is the capture_mode of the last heartbeat; '-' before one says."""
    tracker = ready_tracker("a", "b")
    tracker.heartbeat("a", beat("a", "boot-1", 2, metrics={"capture_mode": "kernel"}), 0.5)
    lines = table_lines(list(tracker.collectors.values()), 1.0, height=10, header="H")
    titles = lines[1].split("  ")
    column = [t.strip() for t in titles if t.strip()].index("CAPTURE")
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert (rows["a"][column], rows["b"][column]) == ("kernel", "-")


# -- the bus layer on MemoryBus -------------------------------------------------------


def request(
    operation: str, payload: dict[str, Any] | None, *, client_id: str = "c1", request_id: str = "r1"
) -> bytes:
    """A request envelope (protocol section 3) addressed to ``client_id``'s registration topic."""
    now = datetime.now(UTC)
    return json.dumps(
        {
            "request_id": request_id,
            "client_id": client_id,
            "target": registration_topic(client_id),
            "operation": operation,
            "payload": payload,
            "timestamp": now.isoformat(),
            "deadline": (now + timedelta(seconds=10)).isoformat(),
        }
    ).encode()


def register_payload(cid: str = "c1", **changes: Any) -> dict[str, Any]:
    """A valid Register payload, with ``changes``."""
    payload: dict[str, Any] = {
        "collector_id": cid,
        "collector_type": "process-monitor",
        "version": "0.1.0",
        "capabilities": ["health-check"],
        "pid": 1234,
        "hostname": "host",
        "boot_id": "boot-1",
        "heartbeat_interval_ms": 1000,
    }
    payload.update(changes)
    return payload


class Harness:
    """An agent and a "collector" bus on one MemoryBroker."""

    def __init__(self, assigned_interval_ms: int | None = None) -> None:
        self.broker = MemoryBroker()
        self.events: list[AgentEvent] = []
        self.tracker = Tracker(assigned_interval_ms=assigned_interval_ms)
        self.now = 0.0
        self.agent = Agent(
            MemoryBus(self.broker),
            self.tracker,
            on_events=self.events.extend,
            service_id="agent-t",
            clock=lambda: self.now,
        )
        self.peer = MemoryBus(self.broker)
        self.answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def start(self, *client_ids: str) -> None:
        """Start both buses; the peer hears the answers to each of ``client_ids`` (default c1)."""
        await self.agent.bus.start()
        await self.agent.start()
        await self.peer.start()
        for client_id in client_ids or ("c1",):
            await self.peer.subscribe(
                response_topic(client_id),
                lambda _c, data: self.answers.put_nowait(json.loads(data)),
            )

    async def ask(self, data: bytes, *, collector_id: str = "c1") -> dict[str, Any]:
        """Publish on ``collector_id``'s registration topic (protocol v2) and await one answer."""
        await self.peer.publish(registration_topic(collector_id), data)
        async with asyncio.timeout(5):
            return await self.answers.get()

    def answered(self) -> list[str]:
        """The topics the agent published answers on, in order."""
        return [c for c, _ in self.broker.published if c.startswith("control.rpc.response.")]


async def test_register_is_answered_with_the_response_envelope() -> None:
    """A valid Register gets Success, Accepted and the assigned interval, on the caller's topic."""
    harness = Harness(assigned_interval_ms=200)
    await harness.start()
    answer = await harness.ask(request("Register", register_payload()))
    assert answer["payload"] == {
        "status": "Accepted",
        "message": None,
        "heartbeat_interval_ms": 200,
    }
    assert (answer["request_id"], answer["correlation_id"], answer["operation"]) == (
        "r1",
        "r1",
        "Register",
    )
    assert (answer["service_id"], answer["status"], answer["error"], answer["state"]) == (
        "agent-t",
        "Success",
        None,
        "ready",
    )
    assert {"timestamp", "queue_time_ms", "execution_time_ms", "total_time_ms"} <= set(answer)
    assert harness.tracker.collectors["c1"].state == "registered"
    assert [e.kind for e in harness.events] == [EventKind.REGISTERED]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (register_payload(collector_type="network-monitor"), "collector_type"),
        (register_payload(cid="c2"), "does not match"),
        (register_payload(pid="1234"), "pid"),
        (register_payload(heartbeat_interval_ms=0), "heartbeat_interval_ms"),
        (None, "Register payload"),
    ],
    ids=["collector-type", "id-mismatch", "wrong-type", "out-of-range", "no-payload"],
)
async def test_an_invalid_register_is_rejected_with_a_message(
    payload: dict[str, Any] | None, reason: str
) -> None:
    """Schema errors, mismatched ids and other collector types are Rejected, saying why."""
    harness = Harness()
    await harness.start()
    answer = await harness.ask(request("Register", payload))
    assert answer["status"] == "Error"
    assert answer["error"]["code"] == "INVALID_REQUEST"
    assert answer["payload"]["status"] == "Rejected"
    assert reason in answer["payload"]["message"]
    assert harness.tracker.collectors == {}
    assert [e.kind for e in harness.events] == [EventKind.REJECTED]


async def test_unanswerable_and_unsupported_requests() -> None:
    """Bad JSON or a bad client_id is dropped; another operation is UNSUPPORTED_OPERATION."""
    harness = Harness()
    await harness.start()
    await harness.peer.publish(registration_topic("c1"), b"{nope")
    await harness.peer.publish(
        registration_topic("c1"), request("Register", None, client_id="Bad Id")
    )
    # v2: nothing may follow an identifier, not even a newline (on its "own" topic).
    await harness.peer.publish(
        registration_topic("c1\n"), request("Register", None, client_id="c1\n")
    )
    answer = await harness.ask(request("HealthCheck", None))
    assert answer["error"]["code"] == "UNSUPPORTED_OPERATION"
    assert harness.agent.rpc_malformed_total == 3
    assert harness.answered() == ["control.rpc.response.c1"]


async def test_the_agent_pattern_subscribes_the_v2_registration_topics() -> None:
    """The agent listens on control.registration.* (protocol v2 section 2), not the v1 channel."""
    harness = Harness()
    await harness.start("c7")
    assert REGISTRATION_PATTERN == "control.registration.*"
    assert await harness.peer.publish("control.collector.registration", b"{}") == 0
    answer = await harness.ask(
        request("Register", register_payload("c7"), client_id="c7"), collector_id="c7"
    )
    assert answer["payload"]["status"] == "Accepted"
    assert harness.answered() == ["control.rpc.response.c7"]


async def test_a_request_on_another_collectors_registration_topic_is_dropped() -> None:
    """On control.registration.X only X may register: another client_id is dropped unanswered."""
    harness = Harness()
    await harness.start("c1", "c2")
    spoofed = request("Register", register_payload("c2"), client_id="c2", request_id="spoof")
    await harness.peer.publish(registration_topic("c1"), spoofed)
    dereg = request(
        "Deregister",
        {"collector_id": "c2", "boot_id": "boot-1", "reason": "x", "force": False},
        client_id="c2",
        request_id="spoof-2",
    )
    await harness.peer.publish(registration_topic("c1"), dereg)
    # Messages are delivered in publish order: once the next request is
    # answered, the two before it were handled (and must have been dropped).
    answer = await harness.ask(request("Register", register_payload()))
    assert (answer["request_id"], answer["payload"]["status"]) == ("r1", "Accepted")
    assert harness.answered() == ["control.rpc.response.c1"]
    assert harness.agent.rpc_malformed_total == 2
    assert harness.agent.requests_total == 1
    assert set(harness.tracker.collectors) == {"c1"}
    assert [e.kind for e in harness.events] == [EventKind.REGISTERED]


async def test_a_repeated_request_id_gets_the_first_answer_again() -> None:
    """Idempotent: the repeat is answered identically and registers nothing twice."""
    harness = Harness()
    await harness.start()
    first = await harness.ask(request("Register", register_payload()))
    second = await harness.ask(request("Register", register_payload()))
    assert first == second
    assert [e.kind for e in harness.events] == [EventKind.REGISTERED]


async def test_heartbeats_status_and_deregister_over_the_bus() -> None:
    """Heartbeats and announcements arrive by pattern; Deregister marks the collector."""
    harness = Harness()
    await harness.start()
    await harness.ask(request("Register", register_payload()))
    status = {"collector_id": "c1", "boot_id": "boot-1", "state": "ready", "timestamp": "t"}
    await harness.peer.publish("control.health.status.c1", json.dumps(status).encode())
    for seq in (1, 2, 4):
        hb: dict[str, Any] = {
            "collector_id": "c1",
            "boot_id": "boot-1",
            "sequence": seq,
            "state": "ready",
            "health_status": "Healthy",
            "reasons": [],
            "metrics": {"events_published": 7, "buffer_level_percent": 3.0},
        }
        await harness.peer.publish("control.health.heartbeat.c1", json.dumps(hb).encode())
    dereg = {
        "collector_id": "c1",
        "boot_id": "boot-1",
        "reason": "test",
        "force": False,
        "events_flushed": 0,
        "wal_pending": 0,
    }
    answer = await harness.ask(request("Deregister", dereg, request_id="r2"))
    assert (answer["status"], answer["payload"]["status"]) == ("Success", "Accepted")
    record = harness.tracker.collectors["c1"]
    assert (record.sequence, record.lost, record.health, record.state) == (
        4,
        1,
        "Healthy",
        "deregistered",
    )
    assert record.metrics["events_published"] == 7
    assert [e.kind for e in harness.events] == [
        EventKind.REGISTERED,
        EventKind.STATE,
        EventKind.LOST_HEARTBEATS,
        EventKind.DEREGISTERED,
    ]


async def test_tick_reports_lateness_on_the_agents_clock() -> None:
    """Agent.tick runs the tracker's timer with the injected clock."""
    harness = Harness()
    await harness.start()
    await harness.ask(request("Register", register_payload()))
    harness.now = 1.2
    harness.agent.tick()
    assert harness.events[-1].kind is EventKind.LATE


# -- one real run: procmond run registering with run_agent ------------------------------


class Lines:
    """A stand-in stdout that parses JSON lines and wakes waiters."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self.events.append(json.loads(line))
        self.changed.set()
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not any(predicate(e) for e in self.events):
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def daemon_log(tmp_path: Path) -> Iterator[Path]:
    """Where the daemon's output goes; its tail is printed (shown by pytest on failure)."""
    path = tmp_path / "procmond.log"
    yield path
    if path.exists():
        tail = path.read_text(errors="replace").splitlines()[-30:]
        print("procmond log tail:", *tail, sep="\n", file=sys.stderr)


def logged_capture_mode(log: Path) -> str:
    """The mode of the daemon's ``capture mode kernel|cycle: <why>`` log line."""
    found = re.search(r"capture mode (kernel|cycle): ", log.read_text(errors="replace"))
    assert found is not None, "no capture mode line in the daemon's log"
    return found.group(1)


@pytest.mark.redis
@pytest.mark.e2e
async def test_procmond_run_registers_and_heartbeats_with_run_agent(
    fresh_redis: RedisServer, tmp_path: Path, daemon_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real daemon registers with the in-process agent, heartbeats, and deregisters on SIGTERM."""
    lines = Lines()
    monkeypatch.setattr(sys, "stdout", lines)
    stop = asyncio.Event()
    agent = asyncio.create_task(
        run_agent(fresh_redis.url, json_output=True, heartbeat_interval_ms=None, stop=stop)
    )
    # Watch the heartbeats ourselves, to know when several went through the agent too.
    watcher = RedisBus(fresh_redis.url, name="test-watcher")
    sequences: list[int] = []
    seen = asyncio.Event()

    def on_heartbeat(_pattern: str, _channel: str, data: bytes) -> None:
        sequences.append(json.loads(data)["sequence"])
        seen.set()

    await watcher.psubscribe(HEARTBEAT_PATTERN, on_heartbeat)
    await watcher.start()
    assert await watcher.wait_connected(timeout=10)
    log = daemon_log.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "procmond.cli",
        "run",
        "--redis-url",
        fresh_redis.url,
        "--collector-id",
        "agent-e2e",
        "--interval",
        "1",
        "--heartbeat-interval-ms",
        "200",
        "--data-dir",
        str(tmp_path / "data"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env={**os.environ, "PROCMOND_LOG_LEVEL": "info"},
    )
    try:
        await lines.wait_for(lambda e: e["event"] == "registered", timeout=30)
        await lines.wait_for(lambda e: e["event"] == "state" and e["state"] == "ready", 10)
        async with asyncio.timeout(10):
            while len(sequences) < 5:
                seen.clear()
                await seen.wait()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
        await lines.wait_for(lambda e: e["event"] == "deregistered", timeout=10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
        stop.set()
        assert await asyncio.wait_for(agent, 10) == 0
        await watcher.close()
    registered = next(e for e in lines.events if e["event"] == "registered")
    assert (registered["collector_id"], registered["heartbeat_interval_ms"]) == ("agent-e2e", 200)
    kinds_seen = [e["event"] for e in lines.events if e["collector_id"] == "agent-e2e"]
    assert not {"late", "failed", "lost_heartbeats", "rejected"} & set(kinds_seen), kinds_seen
    assert kinds_seen[-1] == "deregistered"
    # The JSON lines carry the capture mode the daemon logged that it runs in.
    modes = [e for e in lines.events if e["event"] == "capture_mode"]
    assert [(e["collector_id"], e["capture_mode"], e["previous"]) for e in modes] == [
        ("agent-e2e", logged_capture_mode(daemon_log), None)
    ]


@pytest.mark.redis
@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="the kernel's process events need root")
async def test_the_agents_table_follows_the_capture_mode_of_a_real_daemon(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    """A daemon run with --no-kernel-events shows `cycle` in the agent's table; UpdateConfig
    kernel_events=true switches it, and the agent reports capture_mode kernel (was cycle)."""
    cid = new_id()
    events: list[AgentEvent] = []
    changed = asyncio.Event()

    def on_events(batch: list[AgentEvent]) -> None:
        events.extend(e for e in batch if e.collector_id == cid)
        changed.set()

    async def mode_reported(mode: str) -> AgentEvent:
        async with asyncio.timeout(15):
            while True:
                found = [
                    e
                    for e in events
                    if e.kind is EventKind.CAPTURE_MODE and e.data["capture_mode"] == mode
                ]
                if found:
                    return found[0]
                changed.clear()
                await changed.wait()

    def captured(table: str) -> str:
        """The CAPTURE cell of the collector's row."""
        titles, *rows = table.splitlines()[1:]
        row = next(r for r in rows if r.startswith(cid + " "))
        return row[titles.index("CAPTURE") :].split()[0]

    bus = RedisBus(fresh_redis.url, name="test-agent")
    agent = Agent(bus, Tracker(assigned_interval_ms=200), on_events=on_events)
    view = LiveTable(io.StringIO())
    stop = asyncio.Event()
    await agent.start()
    await bus.start()
    runner = asyncio.create_task(agent.run(stop, tick_s=0.05))
    client = RpcClient(bus)
    try:
        with daemon(tmp_path, fresh_redis.url, cid, extra_args=("--no-kernel-events",)) as proc:
            first = await mode_reported("cycle")
            assert first.data["previous"] is None
            assert captured(view.render(agent)) == "cycle"
            answer = await client.call(
                cid, "UpdateConfig", {"changes": {"kernel_events": True}}, timeout=15
            )
            assert answer["payload"]["changed_fields"] == ["kernel_events"], answer
            switched = await mode_reported("kernel")
            assert switched.data["previous"] == "cycle", proc.stderr_text()
            assert captured(view.render(agent)) == "kernel"
            proc.signal(signal.SIGTERM)
            assert await proc.wait_async(15) == 0
    finally:
        stop.set()
        await runner
        await client.close()
        await agent.close()
        await bus.close()
