"""The MemoryBus fake: delivery in order, a broker or one bus going down, streams and
injected failures, contained handler errors."""

from __future__ import annotations

import asyncio
import logging

import pytest
from bus_support import C, Inbox, StatusLog

from procmond.bus.memory import MemoryBroker, MemoryBus
from procmond.bus.redis import BusClosed, BusUnavailable


async def _memory_pair() -> tuple[MemoryBroker, MemoryBus, MemoryBus]:
    broker = MemoryBroker()
    a, b = MemoryBus(broker), MemoryBus(broker)
    await a.start()
    await b.start()
    return broker, a, b


async def _drain() -> None:
    """Let call_soon deliveries run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_memory_round_trip_in_order_with_counts() -> None:
    """Fan-out to channel and pattern subscribers, in publish order, counted like PUBLISH."""
    broker, a, b = await _memory_pair()
    inbox = Inbox()
    await a.subscribe("control.x", inbox.on_message)
    await b.psubscribe("control.*", inbox.on_pmessage)
    assert a.status is C.CONNECTED
    assert await b.publish("control.x", b"1") == 2
    assert await b.publish("control.x", b"2") == 2
    assert await b.publish("other", b"3") == 0
    assert inbox.items == []  # delivered via call_soon, not inside publish
    await _drain()
    assert inbox.items == [
        ("control.x", b"1"),
        ("control.*", "control.x", b"1"),
        ("control.x", b"2"),
        ("control.*", "control.x", b"2"),
    ]
    assert broker.published == [("control.x", b"1"), ("control.x", b"2"), ("other", b"3")]


async def test_memory_broker_down_loses_messages_and_restores_subscriptions() -> None:
    """Broker down: Disconnected, Reconnecting, publish fails; back up: Connected, subscribed."""
    broker, a, b = await _memory_pair()
    log, inbox = StatusLog(), Inbox()
    a.add_status_listener(log)
    await a.subscribe("ch", inbox.on_message)
    await b.publish("ch", b"in flight")
    broker.set_down(True)
    await log.reached(C.RECONNECTING)
    with pytest.raises(BusUnavailable):
        await b.publish("ch", b"lost")
    with pytest.raises(BusUnavailable):
        await a.xadd_many([("s", {"f": "v"})], maxlen=None)
    broker.set_down(False)
    assert log.seen == [C.DISCONNECTED, C.RECONNECTING, C.CONNECTED]
    assert await b.publish("ch", b"after") == 1
    await _drain()
    assert inbox.items == [("ch", b"after")]


async def test_memory_per_bus_fault_leaves_the_others_up() -> None:
    """bus.set_down(True) cuts that bus alone: others still talk, it receives nothing."""
    _broker, a, b = await _memory_pair()
    inbox = Inbox()
    await a.subscribe("ch", inbox.on_message)
    a.set_down(True)
    assert a.status is C.DISCONNECTED
    assert b.status is C.CONNECTED
    assert await b.publish("ch", b"x") == 0
    a.set_down(False)
    assert await b.publish("ch", b"y") == 1
    await _drain()
    assert inbox.items == [("ch", b"y")]


async def test_memory_start_while_down_then_up() -> None:
    """Started on a down broker: Disconnected, then Reconnecting, then Connected once it is up."""
    broker = MemoryBroker()
    broker.set_down(True)
    bus, log = MemoryBus(broker), StatusLog()
    bus.add_status_listener(log)
    await bus.start()
    assert not await bus.wait_connected(0.01)
    await log.reached(C.RECONNECTING)
    broker.set_down(False)
    assert await bus.wait_connected(0.01)
    assert log.seen == [C.RECONNECTING, C.CONNECTED]


async def test_memory_streams_ids_maxlen_and_injected_failures() -> None:
    """Stream ids are "n-0" per stream; maxlen trims the oldest; fail_next_xadd fails one call."""
    broker, a, _b = await _memory_pair()
    ids = await a.xadd_many(
        [("s", {"n": str(n)}) for n in range(5)] + [("t", {"n": "x"})], maxlen=3
    )
    assert ids == ["1-0", "2-0", "3-0", "4-0", "5-0", "1-0"]
    assert broker.stream("s") == [("3-0", {"n": "2"}), ("4-0", {"n": "3"}), ("5-0", {"n": "4"})]
    assert broker.stream("missing") == []
    broker.fail_next_xadd()
    with pytest.raises(BusUnavailable):
        await a.xadd_many([("s", {"n": "5"})], maxlen=None)
    assert await a.xadd_many([("s", {"n": "5"})], maxlen=None) == ["6-0"]
    assert a.status is C.CONNECTED


async def test_memory_unsubscribe_drops_messages_in_flight() -> None:
    """A message already scheduled is not delivered after unsubscribe()."""
    _broker, a, b = await _memory_pair()
    inbox = Inbox()
    await a.subscribe("ch", inbox.on_message)
    assert await b.publish("ch", b"x") == 1
    await a.unsubscribe("ch")
    await _drain()
    assert inbox.items == []


async def test_memory_failing_handler_and_listener_are_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Exceptions from handlers and status listeners are logged, not raised into the bus."""
    broker, a, b = await _memory_pair()

    def explode(*_args: object) -> None:
        raise RuntimeError("boom")

    a.add_status_listener(explode)
    await a.subscribe("ch", explode)
    with caplog.at_level(logging.ERROR, logger="procmond.bus"):
        await b.publish("ch", b"x")
        await _drain()
        broker.set_down(True)
    assert "handler" in caplog.text
    assert "listener" in caplog.text
    assert a.status is C.DISCONNECTED


async def test_memory_close_is_idempotent() -> None:
    """close() twice is fine; the closed bus refuses use with BusClosed."""
    _broker, a, _b = await _memory_pair()
    await a.close()
    await a.close()
    assert a.status is C.DISCONNECTED
    with pytest.raises(BusClosed):
        await a.publish("ch", b"x")
