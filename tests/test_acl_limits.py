"""Redis input limits: a 40 MB PUBLISH no longer cuts procmond's or the agent's subscription.

Issue 11: a 40 MB PUBLISH on a shared channel made Redis drop the agent's and
procmond's subscriber connections. Redis copies a PUBLISH into every
subscriber's output buffer and closes the *subscriber* whose buffer passes
``client-output-buffer-limit pubsub`` (32 MB by default); it has no limit per
publisher. The embedded Redis (``procmond.embedded.SERVER_LIMITS``) refuses any
argument over 2 MB instead, closing the sender. The contrast test shows the
drop itself with Redis's default input limits (``proto-max-bulk-len`` 512 MB,
``client-query-buffer-limit`` 1 GB; either of ours alone refuses 40 MB), which
is what the first test would meet without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from acl_support import PROCMOND
from daemon_process import DaemonProcess
from e2e_support import poll
from redis_fixtures import running_redis, short_dir

from procmond.embedded import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

FLOOD = b"x" * 40_000_000


def config(client: redis.Redis, name: str) -> str:
    """One CONFIG GET value."""
    reply: Any = client.config_get(name)
    return str(reply[name])


def subscribers(client: redis.Redis, name: str) -> set[int]:
    """The ids of the connections named ``name`` that hold subscriptions."""
    clients: Any = client.client_list()
    return {
        int(c["id"])
        for c in clients
        if c["name"] == name and (int(c["sub"]) > 0 or int(c["psub"]) > 0)
    }


async def subscribed(client: redis.Redis, name: str) -> set[int]:
    """Wait (bounded) until a connection named ``name`` is subscribed; its ids."""
    return await poll(
        lambda: asyncio.to_thread(subscribers, client, name), lambda ids: bool(ids), timeout=30
    )


def flood(url: str, channel: str) -> str:
    """PUBLISH 40 MB on ``channel``: ``"refused"`` when Redis closed us, else ``"published"``."""
    client = redis.Redis.from_url(url, client_name="flooder")
    try:
        client.publish(channel, FLOOD)
    except (redis.exceptions.ConnectionError, redis.exceptions.ResponseError):
        return "refused"
    finally:
        client.close()
    return "published"


@contextlib.asynccontextmanager
async def agent(data_dir: Path | None, url: str | None = None) -> AsyncIterator[None]:
    """``procmond agent`` on the embedded Redis of ``data_dir`` (or ``url``), ended after."""
    where = ["--redis-url", url] if url else ["--data-dir", str(data_dir)]
    proc = await asyncio.create_subprocess_exec(
        *PROCMOND,
        "agent",
        *where,
        "--json",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await proc.wait()


def test_every_server_started_here_has_the_limits(fresh_redis: RedisServer) -> None:
    """proto-max-bulk-len 2 MB, query buffer 32 MB, pubsub output buffer written out."""
    client = redis.Redis(unix_socket_path=str(fresh_redis.socket_path))
    assert config(client, "proto-max-bulk-len") == str(2 * 1024 * 1024)
    assert config(client, "client-query-buffer-limit") == str(32 * 1024 * 1024)
    assert "pubsub 33554432 8388608 60" in config(client, "client-output-buffer-limit")


async def test_the_embedded_redis_refuses_a_40mb_publish_and_keeps_procmond_subscribed() -> None:
    """procmond run on its own embedded Redis, the agent beside it: a 40 MB PUBLISH on
    procmond's control topic and on a heartbeat topic is refused, the flooder is
    disconnected, both subscriber connections stay, and procmond still answers ctl."""
    data_dir = short_dir("pmd-lim-")
    try:
        with DaemonProcess(data_dir / "d", redis_url=None, collector_id="lim-01") as proc:
            url = await poll(lambda: asyncio.to_thread(_read_url, data_dir / "d"), bool, timeout=30)
            admin = redis.Redis.from_url(url)
            daemon_sub = await subscribed(admin, "procmond-lim-01-sub")
            async with agent(data_dir / "d"):
                agent_sub = await subscribed(admin, "procmond-agent-sub")
                assert flood(url, "control.collector.lim-01") == "refused"
                assert flood(url, "control.health.heartbeat.lim-01") == "refused"
                assert subscribers(admin, "procmond-lim-01-sub") == daemon_sub
                assert subscribers(admin, "procmond-agent-sub") == agent_sub
                assert subscribers(admin, "flooder") == set()
                ctl = await asyncio.create_subprocess_exec(
                    *PROCMOND,
                    "ctl",
                    "health",
                    "--collector",
                    "lim-01",
                    "--data-dir",
                    str(data_dir / "d"),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                async with asyncio.timeout(30):
                    assert await ctl.wait() == 0
            proc.signal(signal.SIGTERM)
            assert await proc.wait_async(30) == 0
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _read_url(data_dir: Path) -> str:
    try:
        return (data_dir / "redis" / "redis.url").read_text().strip()
    except FileNotFoundError:
        return ""


async def test_without_the_limit_a_40mb_publish_drops_procmonds_subscription(
    tmp_path: Path,
) -> None:
    """With Redis's default input limits the same PUBLISH is delivered, and Redis closes
    procmond's subscriber connection (its output buffer passed 32 MB): issue 11's drop. procmond
    then connects and subscribes again."""
    defaults = ["--proto-max-bulk-len", "512mb", "--client-query-buffer-limit", "1gb"]
    with running_redis(extra_args=defaults) as server:
        admin = redis.Redis(unix_socket_path=str(server.socket_path))
        with DaemonProcess(tmp_path / "d", redis_url=server.url, collector_id="lim-02") as proc:
            before = await subscribed(admin, "procmond-lim-02-sub")
            assert flood(server.url, "control.collector.lim-02") == "published"
            # The old connection is closed; procmond's bus connects and subscribes again.
            await poll(
                lambda: asyncio.to_thread(subscribers, admin, "procmond-lim-02-sub"),
                lambda ids: bool(ids) and not ids & before,
                timeout=30,
            )
            proc.signal(signal.SIGTERM)
            assert await proc.wait_async(30) == 0
