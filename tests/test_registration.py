"""Registration, announcements, heartbeats and the lifecycle's guards over a MemoryBus,
with the harness's scripted fake agent."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path

import pytest
from memory_harness import CID, FAST, Client, running_parts, soon

from fsm import State
from procmond.daemon.messages import GracefulShutdown, RegistrationDue
from procmond.daemon.registration import RegistrationSettings, backoff_delays

STATUS = f"control.health.status.{CID}"
HEARTBEAT = f"control.health.heartbeat.{CID}"
REGISTRATION = f"control.registration.{CID}"


async def wait_state(client: Client, state: str, count: int = 1) -> None:
    """``count`` announcements of ``state`` arrived on the status topic."""
    async with asyncio.timeout(5):
        while sum(1 for m in client.on(STATUS) if m["state"] == state) < count:
            client.changed.clear()
            await client.changed.wait()


def test_backoff_is_exponential_from_1_s_to_60_s_with_20_percent_jitter() -> None:
    """Retry delays double from 1 s up to 60 s, each within +-20 % (protocol section 7)."""
    delays = backoff_delays(rng=random.Random(3))
    base = 1.0
    for delay in delays[:10]:
        assert base * 0.8 <= delay <= base * 1.2
        base = min(base * 2, 60.0)
    assert max(delays) <= 72.0


@pytest.mark.parametrize("first", ["ignore", "reject"])
async def test_failed_attempt_is_retried_then_ready(tmp_path: Path, first: str) -> None:
    """An ignored (timed out) or rejected Register is retried; accepted: ready, heartbeat 1."""
    async with running_parts(
        tmp_path, registration=FAST, agent_script=[first], agent_then="accept"
    ) as parts:
        parts.agent.interval_ms = 1000
        await parts.actor.entered[State.READY].reach(1)
        await wait_state(parts.client, "ready")
        registers = parts.agent.registers()
        assert len(registers) == 2
        assert registers[0]["payload"]["boot_id"] == registers[1]["payload"]["boot_id"]
        assert registers[0]["client_id"] == CID
        assert registers[0]["target"] == REGISTRATION
        assert parts.registration.heartbeat_interval_ms == 1000  # the agent's wins
        beats = await parts.client.wait(HEARTBEAT, 1)
        assert beats[0]["sequence"] == 1
        ready = next(m for m in parts.client.on(STATUS) if m["state"] == "ready")
        assert ready["heartbeat_interval_ms"] == 1000


async def test_heartbeats_numbered_from_1_across_re_registration_after_bus_loss(
    tmp_path: Path,
) -> None:
    """Sequence grows by 1 per heartbeat of the boot, lost ones included, across re-registration."""
    fast_beats = dataclasses.replace(FAST, heartbeat_interval_ms=50)  # the collector's own
    async with running_parts(tmp_path, registration=fast_beats, agent_then="accept") as parts:
        client = parts.client
        await wait_state(client, "ready")
        await client.wait(HEARTBEAT, 3)
        parts.broker.set_down(True)
        publisher = parts.actor.publisher
        # Two heartbeats are numbered while the bus is down (their publish fails).
        await parts.actor.mailbox.taken.reach(parts.actor.mailbox.taken.value + 2)
        parts.broker.set_down(False)
        await wait_state(client, "ready", count=2)
        received_before = len(client.on(HEARTBEAT))
        await client.wait(HEARTBEAT, received_before + 2)
        sequences = [m["sequence"] for m in client.on(HEARTBEAT)]
        assert sequences[0] == 1
        assert sequences == sorted(set(sequences))
        # Every number was used: the ones not received are exactly the ones that failed.
        missing = set(range(1, sequences[-1] + 1)) - set(sequences)
        assert len(missing) == publisher.heartbeats_failed
        assert publisher.heartbeats_failed >= 1
        assert len(parts.agent.registers()) == 2
        assert {r["payload"]["boot_id"] for r in parts.agent.registers()} == {"boot-1"}


async def test_gives_up_after_max_attempts(tmp_path: Path) -> None:
    """With max_attempts, as many failures in a row give up (the daemon then drains); never
    ready, and the third answer is never asked for."""
    settings = RegistrationSettings(
        attempt_timeout_s=0.3, backoff_initial_s=0.01, backoff_max_s=0.05, max_attempts=2
    )
    gave_up: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    async with running_parts(
        tmp_path,
        registration=settings,
        agent_script=["reject", "reject"],
        agent_then="accept",
        on_give_up=gave_up.set_result,
    ) as parts:
        why = await asyncio.wait_for(gave_up, 5)
        assert "2 time(s)" in why
        assert len(parts.agent.registers()) == 2
        assert parts.actor.state is State.UNREGISTERED
        assert parts.actor.entered[State.READY].value == 0


async def test_a_stale_answer_after_a_retry_is_refused_by_its_guard(tmp_path: Path) -> None:
    """Guard answer_is_current: an Accepted for an attempt that already timed out, arriving
    while the retry is in flight, does not make the collector ready; the retry's answer does."""
    settings = RegistrationSettings(attempt_timeout_s=0.2, backoff_initial_s=0.01)
    async with running_parts(tmp_path, registration=settings) as parts:
        actor, agent = parts.actor, parts.agent
        await agent.holding.reach(1)
        await actor.entered[State.REGISTERING].reach(2)  # the first attempt timed out: retry
        await agent.holding.reach(2)
        stale, current = agent.held
        assert actor.registrar.attempt_id == current["request_id"]
        taken = actor.mailbox.taken.value
        agent.reply_to(stale, "Accepted")
        await actor.mailbox.taken.reach(taken + 1)  # the actor took the late answer ...
        assert actor.state is State.REGISTERING  # ... and its guard refused it
        assert actor.entered[State.READY].value == 0
        agent.reply_to(current, "Accepted")
        await actor.entered[State.READY].reach(1)


async def test_a_stale_rejection_does_not_fail_the_attempt_in_flight(tmp_path: Path) -> None:
    """Guard answer_is_current on registration_failed: a late Rejected for an earlier attempt
    is ignored; the attempt in flight stays in flight."""
    settings = RegistrationSettings(attempt_timeout_s=0.2, backoff_initial_s=0.01)
    async with running_parts(tmp_path, registration=settings) as parts:
        actor, agent = parts.actor, parts.agent
        await actor.entered[State.REGISTERING].reach(2)
        await agent.holding.reach(2)
        stale, current = agent.held
        failures = actor.registrar.failures
        taken = actor.mailbox.taken.value
        agent.reply_to(stale, "Rejected")
        await actor.mailbox.taken.reach(taken + 1)
        assert actor.state is State.REGISTERING
        assert actor.registrar.failures == failures
        assert actor.registrar.attempt_id == current["request_id"]


async def test_no_attempt_starts_while_the_bus_is_down(tmp_path: Path) -> None:
    """A retry that falls due with the bus lost waits for the bus: no attempt is started
    (none could be sent), and the collector registers once the bus is back."""
    settings = RegistrationSettings(attempt_timeout_s=5, backoff_initial_s=0.01)
    async with running_parts(
        tmp_path, registration=settings, agent_script=["reject"], agent_then="accept"
    ) as parts:
        actor = parts.actor
        await actor.entered[State.UNREGISTERED].reach(2)  # rejected: a retry is scheduled
        parts.broker.set_down(True)
        await actor.registrar.waiting_for_bus.reach(1)  # the retry fell due: it waits
        assert actor.state is State.UNREGISTERED
        parts.broker.set_down(False)
        await actor.entered[State.READY].reach(1)
        assert actor.entered[State.REGISTERING].value == 2  # the first attempt, the retry
        assert len(parts.agent.registers()) == 2


async def test_registration_due_refused_by_the_guard_when_the_bus_dropped_meanwhile(
    tmp_path: Path,
) -> None:
    """Guard bus_connected refusing: a RegistrationDue sent while the bus was up and taken
    after it dropped leaves the state unregistered, starts no attempt, and the registrar
    retries as soon as the bus is back (not after another backoff)."""
    async with running_parts(tmp_path, agent_script=["reject"], agent_then="accept") as parts:
        actor = parts.actor
        await actor.entered[State.UNREGISTERED].reach(2)  # the retry is 30 s away (STEADY)
        parts.broker.set_down(True)
        taken = actor.mailbox.taken.value
        assert actor.tell(RegistrationDue())
        await actor.mailbox.taken.reach(taken + 1)
        assert actor.state is State.UNREGISTERED
        assert actor.entered[State.REGISTERING].value == 1
        await actor.registrar.waiting_for_bus.reach(1)
        parts.broker.set_down(False)
        await actor.entered[State.READY].reach(1)


async def test_bus_restored_re_registers_and_announces_ready_again(tmp_path: Path) -> None:
    """ready -> registering when the bus comes back after a loss; ready announced twice,
    the first heartbeat after each ready."""
    async with running_parts(tmp_path, registration=FAST, agent_then="accept") as parts:
        actor = parts.actor
        await wait_state(parts.client, "ready")
        parts.broker.set_down(True)
        parts.broker.set_down(False)
        await actor.entered[State.READY].reach(2)
        await wait_state(parts.client, "ready", count=2)
        assert actor.entered[State.REGISTERING].value == 2


async def test_shutdown_while_registering_ends_the_attempt_and_deregisters_nothing(
    tmp_path: Path,
) -> None:
    """GracefulShutdown during an attempt: draining at once (the attempt is not waited out),
    no Deregister (never accepted), deregistered announced; a late answer changes nothing."""
    async with running_parts(tmp_path) as parts:
        actor, agent = parts.actor, parts.agent
        await agent.holding.reach(1)
        outcome = await actor.ask(GracefulShutdown("test", 5), soon(5))
        assert outcome.error is None
        await actor.entered[State.DEREGISTERED].reach(1)
        assert actor.registrar.attempt_id is None
        assert [r["operation"] for r in agent.requests] == ["Register"]
        await wait_state(parts.client, "deregistered")
        states = [m["state"] for m in parts.client.on(STATUS)]
        assert states == ["draining", "deregistered"]
