"""The daemon's parts wired on a MemoryBroker, for fast unit tests (no Redis, no psutil).

:class:`FakeCollector` stands in for ProcessCollector: ``collect()`` returns
events made up by the test and can be held mid-cycle on a
``threading.Event`` the test controls. :class:`Parts` holds an actor, a
pipeline with a real write-ahead log in ``tmp_path``, an RPC service and a
registrar (the actor's), running in a task group; :class:`Client` is the other
side of the bus (a caller) and :class:`FakeAgent` answers registrations.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from fsm import State
from procmond.bus.memory import MemoryBroker, MemoryBus
from procmond.collect.collector import CollectorSettings, CycleResult, ProcessCollector
from procmond.collect.process_event import ProcessEvent
from procmond.daemon.actor import ProcmondMonitorCollector
from procmond.daemon.messages import CollectTick, Outcome, Request
from procmond.daemon.readiness import Counter
from procmond.daemon.registration import Identity, Registrar, RegistrationSettings
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
        """Wait until a cycle is inside collect() (a thread's Event, waited for off the loop)."""
        if not await asyncio.to_thread(self.entered.wait, timeout):
            raise TimeoutError("no cycle entered collect()")


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


class FakeAgent:
    """The agent's side of registration on the broker, answering per a script.

    Each Register is answered by the next mode of ``script`` ("accept",
    "reject" or "ignore"), then by ``then``; "hold" keeps it unanswered until
    :meth:`answer` is called. Deregister is always answered.
    """

    def __init__(self, bus: MemoryBus, script: list[str] | None = None, then: str = "hold") -> None:
        self.bus = bus
        self.script = list(script or [])
        self.then = then
        self.interval_ms: int | None = None
        self.requests: list[dict[str, Any]] = []
        self.held: list[dict[str, Any]] = []
        #: Register requests held so far (readiness for :meth:`answer`).
        self.holding = Counter()
        self._answered = 0
        self._tasks: set[asyncio.Task[int]] = set()

    async def start(self) -> None:
        await self.bus.psubscribe("control.registration.*", self._on_request)

    def registers(self) -> list[dict[str, Any]]:
        """The Register requests received, in order."""
        return [r for r in self.requests if r["operation"] == "Register"]

    def _on_request(self, pattern: str, channel: str, data: bytes) -> None:
        request = json.loads(data)
        self.requests.append(request)
        if request["operation"] == "Deregister":
            self._reply(request, "Accepted")
            return
        mode = self.script.pop(0) if self.script else self.then
        if mode == "hold":
            self.held.append(request)
            self.holding.add()
        elif mode != "ignore":
            self._reply(request, "Accepted" if mode == "accept" else "Rejected")

    async def answer(self, mode: str = "accept") -> dict[str, Any]:
        """Answer the oldest held Register ("accept" or "reject") once it arrived; returns it."""
        self._answered += 1
        await self.holding.reach(self._answered)
        request = self.held.pop(0)
        self._reply(request, "Accepted" if mode == "accept" else "Rejected")
        return request

    def take_held(self) -> dict[str, Any] | None:
        """The oldest held Register, now no longer held (None when none is)."""
        if not self.held:
            return None
        self._answered += 1
        return self.held.pop(0)

    async def send_reply(self, request: dict[str, Any], status: str) -> None:
        """Answer ``request`` and return once published (a late answer, too)."""
        self._reply(request, status)
        await asyncio.gather(*self._tasks)

    def reply_to(self, request: dict[str, Any], status: str) -> None:
        """Answer ``request`` now, whatever was done with it before (a late answer)."""
        self._reply(request, status)

    def _reply(self, request: dict[str, Any], status: str) -> None:
        answer = {
            "request_id": request["request_id"],
            "correlation_id": request["request_id"],
            "operation": request["operation"],
            "service_id": "agent",
            "status": "Success",
            "payload": {
                "status": status,
                "message": None if status == "Accepted" else "scripted rejection",
                "heartbeat_interval_ms": self.interval_ms,
            },
        }
        task = asyncio.get_running_loop().create_task(
            self.bus.publish(
                f"control.rpc.response.{request['client_id']}", json.dumps(answer).encode()
            )
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


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
    client: Client
    agent: FakeAgent

    @property
    def registration(self) -> Registrar:
        """The actor's registrar."""
        return self.actor.registrar


#: Registration in unit tests: an attempt is answered or held by the fake agent;
#: a failure is retried after 30 s, so a state reached stays put.
STEADY = RegistrationSettings(attempt_timeout_s=30, backoff_initial_s=30, backoff_max_s=30)
#: Retries within milliseconds, for tests of retrying.
FAST = RegistrationSettings(attempt_timeout_s=0.3, backoff_initial_s=0.01, backoff_max_s=0.05)


def soon(seconds: float = 5.0) -> float:
    """A deadline ``seconds`` from now on the ``time.monotonic`` clock."""
    return time.monotonic() + seconds


@asynccontextmanager
async def running_parts(
    tmp_path: Path,
    *,
    mailbox_size: int = 100,
    config: CollectorConfig | None = None,
    collector: FakeCollector | None = None,
    registration: RegistrationSettings | None = None,
    agent_script: list[str] | None = None,
    agent_then: str = "hold",
    rng_seed: int = 7,
    wal_max_bytes: int | None = None,
    on_give_up: Any = None,
) -> AsyncIterator[Parts]:
    """Start the parts in the daemon's order; stop them at the end whatever happened.

    The actor enters ``unregistered`` and, the bus being up, sends its first
    Register at once; the fake agent answers it per ``agent_script``, then
    per ``agent_then`` ("hold" by default: the collector stays registering
    until the test answers with :meth:`FakeAgent.answer`).
    """
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
        Identity(CID, "boot-1", "host", 4242, "0.0-test"),
        config or CollectorConfig(collection_interval_secs=3600),
        cast(ProcessCollector, fake),
        pipeline,
        bus,
        registration=registration or STEADY,
        mailbox_size=mailbox_size,
        rng=random.Random(rng_seed),
        on_give_up=on_give_up,
    )
    rpc = RpcService(actor, bus)
    actor.serve(rpc)
    client_bus = MemoryBus(broker)
    client = Client(client_bus)
    agent = FakeAgent(client_bus, agent_script, agent_then)
    await client_bus.start()
    await client_bus.subscribe(f"control.rpc.response.{CLIENT}", client.on_message)
    await client_bus.psubscribe("control.health.*", client.on_pattern)
    await agent.start()
    await bus.start()
    parts = Parts(broker, bus, fake, wal, pipeline, actor, rpc, client, agent)
    tasks = [
        asyncio.create_task(actor.run(), name="actor"),
        asyncio.create_task(pipeline.run(), name="flusher"),
    ]
    try:
        # The initial state entered, its effects performed: listening, collecting.
        await actor.entered[State.UNREGISTERED].reach(1)
        yield parts
    finally:
        actor.stop()
        fake.gate.set()
        tasks[1].cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        await rpc.close(timeout=1)
        await bus.close()
        await client_bus.close()
        await pipeline.close()


async def make_ready(parts: Parts) -> None:
    """Registered: the fake agent accepts the attempt it holds (or the next one)."""
    entered = parts.actor.entered[State.READY]
    before = entered.value
    await parts.agent.answer("accept")
    await entered.reach(before + 1)


async def hold_cycle(parts: Parts) -> None:
    """A collection cycle runs and is held inside collect() until ``collector.gate`` is set."""
    fake = parts.collector
    await parts.actor.collection.cycles.reach(1)  # the baseline is over
    fake.gate.clear()
    fake.entered.clear()
    assert parts.actor.tell(CollectTick())
    await fake.wait_entered()


async def ask_taken(
    actor: ProcmondMonitorCollector, message: Request, seconds: float = 5.0
) -> asyncio.Task[Outcome]:
    """Ask ``message`` in a task and return once the actor took it (it is being executed)."""
    before = actor.mailbox.taken.value
    task = asyncio.ensure_future(actor.ask(message, soon(seconds)))
    await actor.mailbox.taken.reach(before + 1)
    return task
