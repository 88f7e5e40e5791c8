"""The actor's mailbox against a MemoryBus: admission, BUSY, deadlines, config at cycle ends."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from memory_harness import (
    FakeCollector,
    Parts,
    ask_taken,
    hold_cycle,
    make_ready,
    running_parts,
    soon,
)
from protocol_tables import SECTION_5

from fsm import State
from procmond.daemon.messages import GracefulShutdown, HealthCheck, Request, UpdateConfig
from procmond.errors import Refused

# Protocol section 5, written out independently of fsm/.
TABLE = SECTION_5
MESSAGES: dict[str, Request] = {
    "HealthCheck": HealthCheck(),
    "UpdateConfig": UpdateConfig({"max_processes": 5}),
    "GracefulShutdown": GracefulShutdown("test"),
}


async def reach(parts: Parts, state: str) -> None:
    """Drive the parts into ``state`` the way the daemon gets there: through its inputs."""
    actor = parts.actor
    if state == "registering":
        await actor.entered[State.REGISTERING].reach(1)
    elif state == "unregistered":
        await actor.entered[State.REGISTERING].reach(1)
        await parts.agent.answer("reject")  # the retry comes 30 s later (STEADY)
        await actor.entered[State.UNREGISTERED].reach(2)
    elif state == "ready":
        await make_ready(parts)
    elif state == "draining":
        await make_ready(parts)
        await hold_cycle(parts)  # the drain waits for this cycle
        assert actor.tell(GracefulShutdown("test"))
        await actor.entered[State.DRAINING].reach(1)
    else:
        await make_ready(parts)
        assert (await actor.ask(GracefulShutdown("test", soon(5)), soon(10))).error is None
        await actor.entered[State.DEREGISTERED].reach(1)


@pytest.mark.parametrize(
    "state", ["unregistered", "registering", "ready", "draining", "deregistered"]
)
@pytest.mark.parametrize("operation", list(TABLE))
async def test_admission_follows_protocol_section_5(
    tmp_path: Path, state: str, operation: str
) -> None:
    """Each state admits or refuses each wire operation as protocol section 5 says, with context."""
    async with running_parts(tmp_path) as parts:
        actor = parts.actor
        await reach(parts, state)
        assert actor.state.value == state
        expected = TABLE[operation][state]
        if expected == "yes":
            assert actor.lifecycle.admit(MESSAGES[operation].operation).accepted
            return
        with pytest.raises(Refused) as refused:
            actor.offer(MESSAGES[operation])
        assert refused.value.code == expected
        if expected == "INVALID_STATE":
            assert refused.value.status == "Error"
            assert refused.value.context == {
                "state": state,
                "operation": operation,
                "accepted": ["HealthCheck", "GracefulShutdown"],
            }
        else:
            assert refused.value.status == "Unavailable"


async def test_full_mailbox_answers_busy_with_retry_after(tmp_path: Path) -> None:
    """With the actor held by a request, a full mailbox refuses at once with BUSY."""
    fake = FakeCollector()
    fake.gate.clear()
    async with running_parts(tmp_path, mailbox_size=2, collector=fake) as parts:
        actor = parts.actor
        await make_ready(parts)
        await fake.wait_entered()  # the baseline cycle is held
        blocker = await ask_taken(actor, UpdateConfig({"max_processes": 1}))
        queued = [actor.offer(HealthCheck()), actor.offer(HealthCheck())]
        with pytest.raises(Refused) as busy:
            actor.offer(HealthCheck())
        assert (busy.value.code, busy.value.status) == ("BUSY", "Unavailable")
        assert busy.value.context["retry_after_ms"] > 0
        fake.gate.set()
        assert (await blocker).error is None
        for future in queued:
            outcome = await asyncio.wait_for(future, 5)
            assert outcome.error is None


async def test_queued_requests_answered_shutting_down_when_the_actor_stops(
    tmp_path: Path,
) -> None:
    """Everything still queued when the actor stops is answered SHUTTING_DOWN; later offers too."""
    fake = FakeCollector()
    fake.gate.clear()
    async with running_parts(tmp_path, collector=fake) as parts:
        actor = parts.actor
        await make_ready(parts)
        await fake.wait_entered()
        blocker = await ask_taken(actor, UpdateConfig({"max_processes": 1}))
        queued = [actor.offer(HealthCheck()) for _ in range(3)]
        actor.stop()
        fake.gate.set()
        await blocker
        for future in queued:
            outcome = await asyncio.wait_for(future, 5)
            assert outcome.error is not None
            assert outcome.error.code == "SHUTTING_DOWN"
        with pytest.raises(Refused) as late:
            actor.offer(HealthCheck())
        assert late.value.code == "SHUTTING_DOWN"


async def test_deadline_passed_while_queued_is_not_executed(tmp_path: Path) -> None:
    """A request whose deadline passed before its turn gets DEADLINE_EXCEEDED, unexecuted."""
    async with running_parts(tmp_path) as parts:
        actor = parts.actor
        await make_ready(parts)
        future = actor.offer(UpdateConfig({"max_processes": 9}), deadline=time.monotonic() - 0.001)
        outcome = await asyncio.wait_for(future, 5)
        assert outcome.error is not None
        assert (outcome.error.code, outcome.error.status) == ("DEADLINE_EXCEEDED", "Timeout")
        assert actor.config.max_processes == 0
        assert actor.config_version == 1


async def test_execution_overrun_is_timeout_and_the_next_request_is_served(
    tmp_path: Path,
) -> None:
    """UpdateConfig stuck behind a held cycle past its deadline answers TIMEOUT, applies
    nothing, and the mailbox goes on serving."""
    fake = FakeCollector()
    fake.gate.clear()
    async with running_parts(tmp_path, collector=fake) as parts:
        actor = parts.actor
        await make_ready(parts)
        await fake.wait_entered()
        future = actor.offer(UpdateConfig({"max_processes": 9}), deadline=time.monotonic() + 0.2)
        outcome = await asyncio.wait_for(future, 5)
        assert outcome.error is not None
        assert (outcome.error.code, outcome.error.status) == ("TIMEOUT", "Timeout")
        health = await actor.ask(HealthCheck(), soon(5))
        assert health.error is None
        assert health.payload is not None
        assert health.payload["config_version"] == 1
        fake.gate.set()
        assert "update_settings" not in fake.calls


async def test_update_config_waits_for_the_cycle_boundary(tmp_path: Path) -> None:
    """An update sent mid-cycle is applied only after that cycle ended, then answered."""
    fake = FakeCollector()
    fake.gate.clear()
    async with running_parts(tmp_path, collector=fake) as parts:
        actor = parts.actor
        await make_ready(parts)
        await fake.wait_entered()
        pending = await ask_taken(actor, UpdateConfig({"max_processes": 50}))
        assert not pending.done()
        assert actor.config.max_processes == 0
        fake.gate.set()
        outcome = await pending
        assert outcome.error is None
        assert outcome.payload is not None
        assert fake.calls.index("update_settings") > fake.calls.index("collect-end")
        assert outcome.payload["config_version"] == 2
        assert outcome.payload["changed_fields"] == ["max_processes"]
        assert outcome.payload["config"]["max_processes"] == 50
        assert fake.settings[-1].max_processes == 50


async def test_changed_fields_config_version_and_validate_only(tmp_path: Path) -> None:
    """Only real changes bump config_version; validate_only applies nothing; bad values refused."""
    async with running_parts(tmp_path) as parts:
        actor = parts.actor
        await make_ready(parts)

        async def update(
            changes: dict[str, object], validate_only: bool = False
        ) -> dict[str, object]:
            outcome = await actor.ask(UpdateConfig(changes, validate_only), soon(5))
            assert outcome.error is None, outcome.error
            assert outcome.payload is not None
            return outcome.payload

        first = await update({"max_processes": 10, "compute_executable_hashes": False})
        assert (first["config_version"], first["changed_fields"]) == (2, ["max_processes"])
        same = await update({"max_processes": 10})
        assert (same["config_version"], same["changed_fields"]) == (2, [])
        calls = len(parts.collector.settings)
        dry = await update({"max_processes": 11, "collect_enhanced_metadata": False}, True)
        assert dry["config_version"] == 2
        assert dry["changed_fields"] == ["collect_enhanced_metadata", "max_processes"]
        assert actor.config.max_processes == 10
        assert actor.config_version == 2
        assert len(parts.collector.settings) == calls
        bad = await actor.ask(
            UpdateConfig({"max_processes": 12, "max_events_in_flight": "5"}), soon(5)
        )
        assert bad.error is not None
        assert bad.error.code == "VALIDATION_FAILED"
        assert bad.error.context["errors"][0]["field"] == "max_events_in_flight"
        assert actor.config.max_processes == 10  # whole or not at all


async def test_internal_error_is_answered_and_the_actor_keeps_serving(tmp_path: Path) -> None:
    """An unexpected exception becomes INTERNAL; the next request is served."""
    fake = FakeCollector()
    fake.fail_update = True
    async with running_parts(tmp_path, collector=fake) as parts:
        actor = parts.actor
        await make_ready(parts)
        outcome = await actor.ask(UpdateConfig({"max_processes": 3}), soon(5))
        assert outcome.error is not None
        assert (outcome.error.code, outcome.error.status) == ("INTERNAL", "Error")
        assert (await actor.ask(HealthCheck(), soon(5))).error is None


async def test_graceful_shutdown_flushes_and_reports(tmp_path: Path) -> None:
    """GracefulShutdown drains: every logged event reaches the streams, then Success."""
    async with running_parts(tmp_path) as parts:
        actor = parts.actor
        await make_ready(parts)
        outcome = await actor.ask(GracefulShutdown("unit test", 5), soon(10))
        assert outcome.error is None
        assert outcome.payload is not None
        assert set(outcome.payload) == {"events_flushed", "wal_pending", "drain_ms", "complete"}
        assert outcome.payload["complete"] is True
        assert outcome.payload["wal_pending"] == 0
        published = parts.broker.stream("events.process.start")
        assert [int(fields["seq"]) for _id, fields in published] == list(
            range(1, len(published) + 1)
        )
        await actor.entered[State.DEREGISTERED].reach(1)
        assert actor.report is not None
        assert actor.report.reason == "unit test"
        deregister = [r for r in parts.agent.requests if r["operation"] == "Deregister"]
        assert [d["payload"]["reason"] for d in deregister] == ["unit test"]
        refused = await actor.ask(UpdateConfig({"max_processes": 1}), soon(5))
        assert refused.error is not None
        assert refused.error.code == "SHUTTING_DOWN"
