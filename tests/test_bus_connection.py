"""RedisBus across a server that stops, freezes or refuses: the status sequence,
subscriptions restored, commands refused while down, TCP and ACL URLs."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from bus_support import WAIT, C, Inbox, StatusLog, connected
from redis_fixtures import running_redis

from procmond.bus.redis import (
    BusUnavailable,
    RedisBus,
)
from procmond.embedded import RedisServer


@pytest.mark.redis
async def test_status_sequence_across_server_restart(fresh_redis: RedisServer) -> None:
    """Stop + restart: Connected, Disconnected, Reconnecting, Connected; subscriptions work."""
    log, inbox = StatusLog(), Inbox()
    bus = RedisBus(fresh_redis.url)
    bus.add_status_listener(log)
    await bus.start()
    try:
        await log.reached(C.CONNECTED)
        await bus.subscribe("ch", inbox.on_message)
        await bus.psubscribe("p.*", inbox.on_pmessage)
        log.reset()
        fresh_redis.stop()
        await log.reached(C.RECONNECTING)
        fresh_redis.start()
        await log.reached(C.CONNECTED)
        assert log.seen == [C.CONNECTED, C.DISCONNECTED, C.RECONNECTING, C.CONNECTED]
        async with connected(fresh_redis.url) as other:
            assert await other.publish("ch", b"again") == 1
            assert await other.publish("p.x", b"pat") == 1
        assert {await inbox.get(), await inbox.get()} == {("ch", b"again"), ("p.*", "p.x", b"pat")}
    finally:
        await bus.close()
    assert log.seen[-1] is C.DISCONNECTED


@pytest.mark.redis
async def test_subscription_made_while_down_is_active_when_connected(
    fresh_redis: RedisServer,
) -> None:
    """start() returns at once with Redis down; a subscribe() made meanwhile works later."""
    fresh_redis.stop()
    log, inbox = StatusLog(), Inbox()
    bus = RedisBus(fresh_redis.url)
    bus.add_status_listener(log)
    async with asyncio.timeout(1):
        await bus.start()
    try:
        assert bus.status is not C.CONNECTED
        await bus.subscribe("early", inbox.on_message)
        await log.reached(C.RECONNECTING)
        with pytest.raises(BusUnavailable):
            await bus.publish("early", b"x")
        fresh_redis.start()
        assert await bus.wait_connected(WAIT)
        assert await bus.publish("early", b"x") == 1
        assert await inbox.get() == ("early", b"x")
        assert log.seen == [C.RECONNECTING, C.CONNECTED]
    finally:
        await bus.close()


@pytest.mark.redis
async def test_frozen_server_is_noticed(fresh_redis: RedisServer) -> None:
    """A SIGSTOPped server is Disconnected within liveness_timeout + 1 s; back after SIGCONT."""
    log = StatusLog()
    async with connected(fresh_redis.url, liveness_interval=0.2, liveness_timeout=1.0) as bus:
        bus.add_status_listener(log)
        fresh_redis.pause()
        try:
            await log.reached(C.DISCONNECTED, timeout=1.0 + 1.0)
        finally:
            fresh_redis.resume()
        await log.reached(C.CONNECTED)
        assert bus.status is C.CONNECTED


@pytest.mark.redis
async def test_publish_and_xadd_while_down_raise_unavailable(fresh_redis: RedisServer) -> None:
    """With the server gone, publish and xadd_many raise BusUnavailable."""
    log = StatusLog()
    async with connected(fresh_redis.url) as bus:
        bus.add_status_listener(log)
        fresh_redis.stop()
        await log.reached(C.DISCONNECTED)
        with pytest.raises(BusUnavailable):
            await bus.publish("ch", b"x")
        with pytest.raises(BusUnavailable):
            await bus.xadd_many([("s", {"f": "v"})], maxlen=10)


@pytest.mark.redis
async def test_tcp_url() -> None:
    """redis://127.0.0.1:port works as well as unix://."""
    from procmond.embedded import free_port

    with running_redis(port=free_port()) as server:
        assert server.url.startswith("redis://127.0.0.1:")
        inbox = Inbox()
        async with connected(server.url) as bus:
            await bus.subscribe("tcp", inbox.on_message)
            assert await bus.publish("tcp", b"x") == 1
            assert await inbox.get() == ("tcp", b"x")


@pytest.mark.redis
async def test_acl_user_and_password_in_the_url(fresh_redis: RedisServer) -> None:
    """An ACL user:password in a unix:// URL authenticates; a wrong password never connects."""
    admin = aioredis.Redis.from_url(fresh_redis.url)
    try:
        await admin.acl_setuser(
            "collector",
            enabled=True,
            passwords=["+s3cret"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
        await admin.acl_setuser("default", enabled=False)
    finally:
        await admin.aclose()
    path = fresh_redis.url.removeprefix("unix://")
    inbox = Inbox()
    async with connected(f"unix://collector:s3cret@{path}") as bus:
        await bus.subscribe("acl", inbox.on_message)
        assert await bus.publish("acl", b"x") == 1
        assert await inbox.get() == ("acl", b"x")
    wrong = RedisBus(f"unix://collector:wrong@{path}")
    await wrong.start()
    try:
        assert not await wrong.wait_connected(0.5)
    finally:
        await wrong.close()
