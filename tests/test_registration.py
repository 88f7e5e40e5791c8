"""Registration, announcements and heartbeats over a MemoryBus, with a scripted fake agent."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest
from memory_harness import CID, Client, running_parts

from procmond.bus.memory import MemoryBus
from procmond.daemon.registration import (
    REGISTRATION_TOPIC,
    RegistrationFailed,
    RegistrationSettings,
    backoff_delays,
)

STATUS = f"control.health.status.{CID}"
HEARTBEAT = f"control.health.heartbeat.{CID}"
FAST = RegistrationSettings(attempt_timeout_s=0.3, backoff_initial_s=0.01, backoff_max_s=0.05)


class FakeAgent:
    """Answers Register per a script ("accept", "reject", "ignore"), then accepts."""

    def __init__(self, bus: MemoryBus, script: list[str], interval_ms: int | None = 50) -> None:
        self.bus = bus
        self.script = script
        self.interval_ms = interval_ms
        self.requests: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[int]] = set()

    async def start(self) -> None:
        await self.bus.subscribe(REGISTRATION_TOPIC, self._on_request)

    def _on_request(self, channel: str, data: bytes) -> None:
        request = json.loads(data)
        self.requests.append(request)
        if request["operation"] == "Register":
            mode = self.script.pop(0) if self.script else "accept"
        else:
            mode = "accept"
        if mode == "ignore":
            return
        payload = {
            "status": "Accepted" if mode == "accept" else "Rejected",
            "message": None,
            "heartbeat_interval_ms": self.interval_ms,
        }
        response = {"request_id": request["request_id"], "status": "Success", "payload": payload}
        task = asyncio.ensure_future(
            self.bus.publish(f"control.rpc.response.{CID}", json.dumps(response).encode())
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def registers(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["operation"] == "Register"]


async def agent_on(client: Client, script: list[str], interval_ms: int | None = 50) -> FakeAgent:
    agent = FakeAgent(client.bus, script, interval_ms)
    await agent.start()
    return agent


async def wait_state(client: Client, state: str, count: int = 1) -> None:
    async with asyncio.timeout(5):
        while sum(1 for m in client.on(STATUS) if m["state"] == state) < count:
            client.changed.clear()
            await client.changed.wait()


def test_backoff_is_exponential_from_1_s_to_60_s_with_20_percent_jitter() -> None:
    """Delays double from 1 s to a 60 s cap, each within +-20 %; the first retry 0.8..1.2 s."""
    delays = backoff_delays(rng=random.Random(3))
    base = 1.0
    for delay in delays[:10]:
        assert base * 0.8 <= delay <= base * 1.2
        base = min(base * 2, 60.0)
    assert max(delays) <= 72.0


@pytest.mark.parametrize("first", ["ignore", "reject"])
async def test_failed_attempt_is_retried_then_ready(tmp_path: Path, first: str) -> None:
    """An ignored (timed out) or rejected Register is retried; accepted: ready, heartbeat 1."""
    async with running_parts(tmp_path, registration=FAST, run_registration=True) as parts:
        agent = await agent_on(parts.client, [first, "accept"])
        await wait_state(parts.client, "ready")
        registers = agent.registers()
        assert len(registers) == 2
        assert registers[0]["payload"]["boot_id"] == registers[1]["payload"]["boot_id"]
        assert registers[0]["client_id"] == CID
        assert parts.registration.heartbeat_interval_ms == 50
        beats = await parts.client.wait(HEARTBEAT, 1)
        assert beats[0]["sequence"] == 1
        ready = next(m for m in parts.client.on(STATUS) if m["state"] == "ready")
        assert ready["heartbeat_interval_ms"] == 50


async def test_heartbeats_numbered_from_1_across_re_registration_after_bus_loss(
    tmp_path: Path,
) -> None:
    """Sequence grows by 1 per heartbeat of the boot, lost ones included, across re-registration."""
    async with running_parts(tmp_path, registration=FAST, run_registration=True) as parts:
        agent = await agent_on(parts.client, [])
        client = parts.client
        await wait_state(client, "ready")
        await client.wait(HEARTBEAT, 3)
        parts.broker.set_down(True)
        async with asyncio.timeout(5):
            while parts.registration.heartbeats_failed < 2:  # noqa: ASYNC110 - counted, not signalled
                await asyncio.sleep(0.01)
        parts.broker.set_down(False)
        await wait_state(client, "ready", count=2)
        received_before = len(client.on(HEARTBEAT))
        await client.wait(HEARTBEAT, received_before + 2)
        sequences = [m["sequence"] for m in client.on(HEARTBEAT)]
        assert sequences[0] == 1
        assert sequences == sorted(set(sequences))
        # Every number was used: the ones not received are exactly the ones that failed.
        missing = set(range(1, sequences[-1] + 1)) - set(sequences)
        assert len(missing) == parts.registration.heartbeats_failed
        assert len(agent.registers()) == 2
        assert {r["payload"]["boot_id"] for r in agent.registers()} == {"boot-1"}


async def test_gives_up_after_max_attempts(tmp_path: Path) -> None:
    """With max_attempts, as many failures raise RegistrationFailed; never ready."""
    settings = RegistrationSettings(
        attempt_timeout_s=0.3, backoff_initial_s=0.01, backoff_max_s=0.05, max_attempts=2
    )
    async with running_parts(tmp_path, registration=settings) as parts:
        agent = await agent_on(parts.client, ["reject", "reject", "accept"])
        with pytest.raises(ExceptionGroup) as group:
            async with asyncio.timeout(5):
                await parts.registration.run()
        assert group.group_contains(RegistrationFailed)
        assert len(agent.registers()) == 2
        assert parts.actor.state.value == "unregistered"
