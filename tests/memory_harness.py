"""The daemon's parts wired on a MemoryBroker, for fast unit tests (no Redis, no psutil).

:class:`FakeCollector` stands in for ProcessCollector: ``collect()`` returns
events made up by the test and can be held mid-cycle on a
``threading.Event`` the test controls. :class:`Parts` holds an actor, a
pipeline with a real write-ahead log in ``tmp_path``, an RPC service and a
registration manager, running in a task group; :class:`Client` is the other
side of the bus (an agent or a caller).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from procmond.bus.memory import MemoryBroker, MemoryBus
from procmond.collect.collector import CollectorSettings, CycleResult, ProcessCollector
from procmond.collect.process_event import ProcessEvent
from procmond.daemon.actor import Identity, ProcmondMonitorCollector
from procmond.daemon.registration import RegistrationManager, RegistrationSettings
from procmond.daemon.rpc import RpcService
from procmond.schemas import CollectorConfig
from procmond.store.pipeline import EventPipeline
from procmond.store.wal import WriteAheadLog

CID = "unit"
CLIENT = "caller"


def event(pid: int, kind: str = "start") -> ProcessEvent:
    """A made-up process event."""
    now = time.time()
    return ProcessEvent(
        event_type=kind,  # type: ignore[arg-type]
        pid=pid,
        ppid=1,
        name=f"proc{pid}",
        exe=None,
        cmdline=(f"proc{pid}",),
        username=None,
        start_time=now,
        status="sleeping",
        observed_at=now,
    )


class FakeCollector:
    """Duck-typed ProcessCollector: records calls, optionally held mid-cycle."""

    def __init__(self, events_per_cycle: int = 2) -> None:
        self.events_per_cycle = events_per_cycle
        self.gate = threading.Event()
        self.gate.set()  # open: cycles finish at once
        self.entered = threading.Event()
        self.calls: list[str] = []
        self.settings: list[CollectorSettings] = []
        self.fail_update = False
        self._next_pid = 1000

    def collect(self) -> CycleResult:
        self.calls.append("collect-start")
        self.entered.set()
        if not self.gate.wait(30):
            raise RuntimeError("test never released the cycle")
        events = []
        for _ in range(self.events_per_cycle):
            self._next_pid += 1
            events.append(event(self._next_pid))
        self.calls.append("collect-end")
        return CycleResult(events, len(events), 0, 0.0, False, False)

    def update_settings(self, settings: CollectorSettings) -> None:
        if self.fail_update:
            raise RuntimeError("the fake collector refuses new settings")
        self.calls.append("update_settings")
        self.settings.append(settings)

    async def wait_entered(self, timeout: float = 5.0) -> None:
        """Wait until a cycle is inside collect()."""
        async with asyncio.timeout(timeout):
            while not self.entered.is_set():  # noqa: ASYNC110 - a thread's Event
                await asyncio.sleep(0.005)


@dataclass
class Client:
    """A bus client on the broker: sends requests, keeps every message it receives."""

    bus: MemoryBus
    client_id: str = CLIENT
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, channel: str, data: bytes) -> None:
        self.received.append((channel, json.loads(data)))
        self.changed.set()

    def on_pattern(self, pattern: str, channel: str, data: bytes) -> None:
        self.on_message(channel, data)

    def on(self, channel: str) -> list[dict[str, Any]]:
        """Messages received on ``channel``."""
        return [m for c, m in self.received if c == channel]

    async def wait(self, channel: str, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """At least ``count`` messages on ``channel``."""
        async with asyncio.timeout(timeout):
            while len(self.on(channel)) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.on(channel)

    def request(
        self,
        operation: str,
        payload: Any = None,
        *,
        request_id: str | None = None,
        deadline_s: float = 5.0,
        **extra: Any,
    ) -> dict[str, Any]:
        """A request envelope to the collector."""
        now = datetime.now(UTC)
        body = {
            "request_id": request_id or uuid.uuid4().hex,
            "client_id": self.client_id,
            "target": f"control.collector.{CID}",
            "operation": operation,
            "payload": payload,
            "timestamp": now.isoformat(),
            "deadline": (now + timedelta(seconds=deadline_s)).isoformat(),
        }
        body.update(extra)
        return body

    async def send(self, body: dict[str, Any] | bytes) -> None:
        """Publish on the collector's request topic."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.bus.publish(f"control.collector.{CID}", data)

    async def call(
        self, operation: str, payload: Any = None, *, timeout: float = 5.0, **kw: Any
    ) -> dict[str, Any]:
        """Send and await the response with the same request_id."""
        body = self.request(operation, payload, **kw)
        return await self.call_body(body, timeout=timeout)

    async def call_body(self, body: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
        """Send a prepared envelope and await its response."""
        topic = f"control.rpc.response.{self.client_id}"
        seen = len(self.on(topic))
        await self.send(body)
        async with asyncio.timeout(timeout):
            while True:
                for message in self.on(topic)[seen:]:
                    if message["request_id"] == body["request_id"]:
                        return message
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Parts:
    """Everything of one daemon on a memory broker."""

    broker: MemoryBroker
    bus: MemoryBus
    collector: FakeCollector
    wal: WriteAheadLog
    pipeline: EventPipeline
    actor: ProcmondMonitorCollector
    rpc: RpcService
    registration: RegistrationManager
    client: Client


@asynccontextmanager
async def running_parts(
    tmp_path: Path,
    *,
    mailbox_size: int = 100,
    config: CollectorConfig | None = None,
    collector: FakeCollector | None = None,
    registration: RegistrationSettings | None = None,
    run_registration: bool = False,
    rng_seed: int = 7,
    wal_max_bytes: int | None = None,
) -> AsyncIterator[Parts]:
    """Start the parts in the daemon's order; stop them at the end whatever happened."""
    import random

    broker = MemoryBroker()
    bus = MemoryBus(broker)
    fake = collector or FakeCollector()
    wal = (
        WriteAheadLog(tmp_path / "wal")
        if wal_max_bytes is None
        else WriteAheadLog(tmp_path / "wal", max_total_bytes=wal_max_bytes)
    )
    pending = wal.open()
    pipeline = EventPipeline(wal, bus, collector_id=CID, boot_id="boot-1")
    pipeline.restore(pending)
    actor = ProcmondMonitorCollector(
        Identity(CID, "boot-1", "host", 4242),
        config or CollectorConfig(collection_interval_secs=3600),
        cast(ProcessCollector, fake),
        pipeline,
        connection_status=lambda: bus.status.value,
        mailbox_size=mailbox_size,
    )
    rpc = RpcService(actor, bus)
    manager = RegistrationManager(
        actor,
        bus,
        registration
        or RegistrationSettings(attempt_timeout_s=0.5, backoff_initial_s=0.01, backoff_max_s=0.05),
        rng=random.Random(rng_seed),
    )
    client_bus = MemoryBus(broker)
    client = Client(client_bus)
    await client_bus.start()
    await client_bus.subscribe(f"control.rpc.response.{CLIENT}", client.on_message)
    await client_bus.psubscribe("control.health.*", client.on_pattern)
    await bus.start()
    await rpc.start()
    await manager.start()
    parts = Parts(broker, bus, fake, wal, pipeline, actor, rpc, manager, client)
    tasks = [
        asyncio.create_task(actor.run(), name="actor"),
        asyncio.create_task(pipeline.run(), name="flusher"),
    ]
    if run_registration:
        tasks.append(asyncio.create_task(manager.run(), name="registration"))
    try:
        yield parts
    finally:
        actor.stop()
        fake.gate.set()
        for task in tasks:
            if not task.done() and task.get_name() != "actor":
                task.cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        await rpc.close(timeout=1)
        await bus.close()
        await client_bus.close()
        await pipeline.close()


def make_ready(actor: ProcmondMonitorCollector) -> None:
    """Registered, without a registration manager."""
    from fsm import Trigger

    actor.fire(Trigger.START_REGISTRATION)
    actor.fire(Trigger.REGISTRATION_ACCEPTED)
