"""The users of ``procmond acl`` in a real redis-server: each party works, cross moves NOPERM.

The attacker is redis-py logged in as collector ``web-02`` (a compromised
host), trying each move of issue 11 against collector ``web-01``, the agent
and the operators. ``test_the_old_recipe_let_these_moves_through`` runs the
same moves as the user of the recipe documented before this issue: the moves
marked ``old_allowed`` succeed there, so their rows of
``test_a_collector_cannot_reach_another_partys_topics_or_keys`` fail against
that recipe (the others were already closed by it and stay as guards).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from acl_support import (
    AGENT,
    OPERATOR,
    PROCMOND,
    WATCHER,
    AclRedis,
    Move,
    acl_redis,
    attempt,
    next_message,
)
from e2e_support import churn_child, daemon
from redis_fixtures import short_dir

pytestmark = [pytest.mark.redis]

FORGED_ANSWER = json.dumps({"request_id": "x", "status": "Success"})
CTL_TOPIC = "control.rpc.response.ctl-4242-0badcafe"
#: A watch line can carry a HealthCheck answer or a long command line: past asyncio's 64 KiB.
LINE_LIMIT = 16 * 1024 * 1024

#: Every move of issue 11 a collector host could make through Redis, as web-02.
COLLECTOR_MOVES = [
    # "web-02 read web-01's Register" (v1: the shared registration channel)
    Move("read another collector's Register", "subscribe", ("control.registration.web-01",)),
    Move("read another collector's Register", "psubscribe", ("control.registration.*",)),
    Move("read another collector's Register", "subscribe", ("control.collector.registration",)),
    # "... and answered it Accepted on control.rpc.response.web-01"
    Move("read the agent's answers", "subscribe", ("control.rpc.response.web-01",), True),
    Move("read the agent's answers", "psubscribe", ("control.rpc.response.*",)),
    Move("read an operator's answers", "subscribe", (CTL_TOPIC,), True),
    Move(
        "answer on another collector's response topic",
        "command",
        ("PUBLISH", "control.rpc.response.web-01", FORGED_ANSWER),
        True,
    ),
    # "a forged Register + Deregister made the agent drop a live collector"
    Move(
        "publish on another collector's topics",
        "command",
        ("PUBLISH", "control.registration.web-01", "{}"),
    ),
    Move(
        "publish on another collector's topics",
        "command",
        ("PUBLISH", "control.health.heartbeat.web-01", "{}"),
    ),
    Move(
        "publish on another collector's topics",
        "command",
        ("PUBLISH", "control.health.status.web-01", "{}"),
    ),
    # "anyone who can reach its Redis can switch it off" (UpdateConfig, GracefulShutdown)
    Move("send requests to a collector", "command", ("PUBLISH", "control.collector.web-01", "{}")),
    Move(
        "send requests to a collector",
        "command",
        ("PUBLISH", "control.collector.web-02", "{}"),
        True,
    ),
    Move("read requests to another collector", "subscribe", ("control.collector.web-01",)),
    Move("watch every control topic", "psubscribe", ("control.*",)),
    # the event streams
    Move("read the event streams", "command", ("XRANGE", "events.process.start", "-", "+")),
    Move("read the event streams", "command", ("XREAD", "STREAMS", "events.process.exec", "0")),
    Move("read the event streams", "command", ("XREVRANGE", "events.process.stop", "+", "-")),
    Move(
        "write outside the event streams",
        "command",
        ("XADD", "events.process.x", "*", "a", "b"),
        True,
    ),
    Move("write outside the event streams", "command", ("SET", "events.process.start.x", "1")),
    Move("destroy events", "command", ("DEL", "events.process.start")),
    Move("destroy events", "command", ("XTRIM", "events.process.start", "MAXLEN", "0")),
    Move("destroy events", "command", ("XDEL", "events.process.start", "0-1")),
    Move("destroy events", "command", ("FLUSHALL",)),
    Move("destroy events", "command", ("FLUSHDB",)),
    # administration
    Move("inspect or reconfigure Redis", "command", ("KEYS", "*")),
    Move("inspect or reconfigure Redis", "command", ("CONFIG", "GET", "*")),
    Move("inspect or reconfigure Redis", "command", ("CONFIG", "SET", "proto-max-bulk-len", "1gb")),
    Move("inspect or reconfigure Redis", "command", ("CLIENT", "LIST")),
    Move("inspect or reconfigure Redis", "command", ("CLIENT", "KILL", "USER", AGENT)),
    Move("inspect or reconfigure Redis", "command", ("PUBSUB", "CHANNELS")),
    Move("inspect or reconfigure Redis", "command", ("ACL", "LIST")),
    Move("inspect or reconfigure Redis", "command", ("EVAL", "return 1", "0")),
    Move("inspect or reconfigure Redis", "command", ("MONITOR",)),
    Move("inspect or reconfigure Redis", "command", ("SHUTDOWN", "NOSAVE")),
]


@pytest.fixture(scope="module")
def users() -> Iterator[AclRedis]:
    """One private server with the users loaded, for the module."""
    directory = short_dir("pmd-acl-users-")
    with acl_redis(directory) as loaded:
        yield loaded


@pytest.mark.parametrize("move", COLLECTOR_MOVES, ids=lambda m: m.label)
def test_a_collector_cannot_reach_another_partys_topics_or_keys(
    users: AclRedis, move: Move
) -> None:
    """Logged in as collector web-02, every move of issue 11 against others gets NOPERM."""
    assert attempt(users.client("web-02"), move) == "NOPERM", move.issue


def test_the_old_recipe_let_these_moves_through(users: AclRedis) -> None:
    """The recipe documented before issue 11 allowed exactly the moves marked old_allowed."""
    outcomes = {m.label: attempt(users.client("old-web-02"), m) for m in COLLECTOR_MOVES}
    allowed = {m.label for m in COLLECTOR_MOVES if m.old_allowed}
    assert {label for label, result in outcomes.items() if result == "allowed"} == allowed


@pytest.mark.parametrize(
    "move",
    [
        # its own topics, its callers' answers, its streams
        Move("", "subscribe", ("control.collector.web-02", "control.rpc.response.web-02")),
        Move("", "command", ("PUBLISH", "control.registration.web-02", "{}")),
        Move("", "command", ("PUBLISH", "control.health.status.web-02", "{}")),
        Move("", "command", ("PUBLISH", "control.health.heartbeat.web-02", "{}")),
        Move("", "command", ("PUBLISH", CTL_TOPIC, "{}")),
        Move("", "command", ("PUBLISH", "control.rpc.response.agent", "{}")),
        *(
            Move("", "command", ("XADD", f"events.process.{kind}", "*", "a", "b"))
            for kind in ("start", "stop", "modify", "exec")
        ),
    ],
    ids=lambda m: m.label,
)
def test_a_collector_keeps_every_right_it_needs(users: AclRedis, move: Move) -> None:
    """What procmond sends as web-02 is allowed, each on its own selector."""
    assert attempt(users.client("web-02"), move) == "allowed"


@pytest.mark.parametrize(
    ("user", "move"),
    [
        # the agent cannot speak for a collector nor call one, nor touch the streams
        (AGENT, Move("", "command", ("PUBLISH", "control.health.heartbeat.web-01", "{}"))),
        (AGENT, Move("", "command", ("PUBLISH", "control.registration.web-01", "{}"))),
        (AGENT, Move("", "command", ("PUBLISH", "control.collector.web-01", "{}"))),
        (AGENT, Move("", "subscribe", ("control.collector.web-01",))),
        (AGENT, Move("", "psubscribe", ("control.*",))),
        (AGENT, Move("", "command", ("XRANGE", "events.process.start", "-", "+"))),
        (AGENT, Move("", "command", ("XADD", "events.process.start", "*", "a", "b"))),
        # the operator calls collectors, and does nothing a collector or the agent does
        (OPERATOR, Move("", "command", ("PUBLISH", "control.rpc.response.web-01", "{}"))),
        (OPERATOR, Move("", "command", ("PUBLISH", "control.registration.web-01", "{}"))),
        (OPERATOR, Move("", "command", ("PUBLISH", "control.health.heartbeat.web-01", "{}"))),
        (OPERATOR, Move("", "subscribe", ("control.collector.web-01",))),
        (OPERATOR, Move("", "subscribe", ("control.rpc.response.web-01",))),
        (OPERATOR, Move("", "psubscribe", ("control.registration.*",))),
        (OPERATOR, Move("", "command", ("XADD", "events.process.start", "*", "a", "b"))),
        (OPERATOR, Move("", "command", ("FLUSHALL",))),
        # the watcher reads, and writes nothing
        (WATCHER, Move("", "command", ("PUBLISH", "control.collector.web-01", "{}"))),
        (WATCHER, Move("", "command", ("PUBLISH", "control.rpc.response.web-01", "{}"))),
        (WATCHER, Move("", "command", ("XADD", "events.process.start", "*", "a", "b"))),
        (WATCHER, Move("", "command", ("XTRIM", "events.process.start", "MAXLEN", "0"))),
        (WATCHER, Move("", "command", ("XRANGE", "other.key", "-", "+"))),
        (WATCHER, Move("", "psubscribe", ("*",))),
    ],
    ids=lambda v: v if isinstance(v, str) else v.label,
)
def test_the_agent_and_operator_users_are_bounded_too(
    users: AclRedis, user: str, move: Move
) -> None:
    """The agent, ctl and watch users get NOPERM for everything beyond their own part."""
    assert attempt(users.client(user), move) == "NOPERM"


# -- real processes -------------------------------------------------------------


@contextlib.asynccontextmanager
async def agent_process(url: str) -> AsyncIterator[list[dict[str, Any]]]:
    """``procmond agent --json`` as a child; yields the JSON lines it prints (growing)."""
    proc = await asyncio.create_subprocess_exec(
        *PROCMOND,
        "agent",
        "--redis-url",
        url,
        "--json",
        "--heartbeat-interval-ms",
        "1000",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        limit=LINE_LIMIT,
    )
    lines: list[dict[str, Any]] = []

    async def read() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))

    reader = asyncio.create_task(read())
    try:
        yield lines
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            status = await proc.wait()
            await reader
        assert status == 0


async def until(lines: list[dict[str, Any]], **fields: str) -> dict[str, Any]:
    """The first line with these fields (bounded wait)."""
    async with asyncio.timeout(30):
        while True:
            for line in lines:
                if all(line.get(k) == v for k, v in fields.items()):
                    return line
            await asyncio.sleep(0.05)


async def ctl(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    """``procmond ctl ARGS --json`` as the operator; (exit status, response)."""
    proc = await asyncio.create_subprocess_exec(
        *PROCMOND,
        "ctl",
        *args,
        "--json",
        "--redis-url",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, json.loads(out) if out.strip() else {"stderr": err.decode()}


async def watch_sees_web_01(users: AclRedis) -> None:
    """procmond watch --json as the watcher shows web-01's heartbeat, then a new process."""
    watcher = await asyncio.create_subprocess_exec(
        *PROCMOND, "watch", "--json", "--redis-url", users.url(WATCHER),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, limit=LINE_LIMIT,
    )  # fmt: skip
    assert watcher.stdout is not None
    marker = "acl-watch-marker"
    try:
        async with asyncio.timeout(30):  # a heartbeat shown: watch is connected and tailing
            while True:
                line = json.loads(await watcher.stdout.readline())
                if line["topic"] == "control.health.heartbeat.web-01":
                    break
        with churn_child(marker):
            async with asyncio.timeout(30):
                while True:
                    line = json.loads(await watcher.stdout.readline())
                    # a cycle reports the start with the marker; the kernel, its exec
                    if line["topic"] in ("events.process.start", "events.process.exec") and (
                        marker in (line["event"]["cmdline"] or [])
                    ):
                        assert line["collector_id"] == "web-01"
                        break
    finally:
        watcher.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            assert await watcher.wait() == 0


@pytest.mark.e2e
async def test_each_party_works_under_its_own_user(users: AclRedis, tmp_path: Path) -> None:
    """procmond run as web-01 registers with procmond agent as agent, heartbeats, is called by
    procmond ctl as ops, writes its events that procmond watch as eyes shows, and drains; none
    of them is refused anything."""
    admin = users.admin()
    admin.acl_log_reset()  # the refusals of the attack tests before this one
    beats = admin.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    beats.subscribe("control.health.heartbeat.web-01")
    assert next_message(beats)["type"] == "subscribe"
    async with agent_process(users.url(AGENT)) as lines:
        with daemon(tmp_path, users.url("web-01"), "web-01") as proc:
            await until(lines, event="registered", collector_id="web-01")
            await until(lines, event="state", collector_id="web-01", state="ready")
            for _ in range(2):  # two heartbeats on the collector's own topic
                message = None
                async with asyncio.timeout(15):
                    while message is None:
                        message = await asyncio.to_thread(beats.get_message, True, 1.0)
                assert json.loads(message["data"])["collector_id"] == "web-01"
            status, response = await ctl(users.url(OPERATOR), "health", "--collector", "web-01")
            assert (status, response["status"], response["state"]) == (0, "Success", "ready")
            entries: Any = admin.xrange("events.process.start")
            assert any(fields.get(b"collector_id") == b"web-01" for _id, fields in entries)
            await watch_sees_web_01(users)
            proc.signal(signal.SIGTERM)
            assert await proc.wait_async(30) == 0
            await until(lines, event="deregistered", collector_id="web-01")
    beats.close()
    assert users.acl_log_users() & {"web-01", AGENT, OPERATOR, WATCHER} == set()


@pytest.mark.e2e
@pytest.mark.parametrize("attacker", ["web-02", "old-web-02"])
async def test_another_collector_cannot_answer_a_register(
    users: AclRedis, tmp_path: Path, attacker: str
) -> None:
    """Even knowing the request id of web-03's Register, web-02 cannot answer it Accepted:
    NOPERM, and web-03 stays unregistered with no agent running. Under the old recipe the same
    forged answer made web-03 go ready (issue 11's attack), so this test fails there."""
    admin = users.admin()
    watch = admin.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    watch.subscribe("control.registration.web-03", "control.health.status.web-03")
    for _ in range(2):
        assert next_message(watch)["type"] == "subscribe"
    with daemon(tmp_path, users.url("web-03"), "web-03", name=attacker) as proc:
        register = None
        async with asyncio.timeout(30):
            while register is None or register["channel"] != b"control.registration.web-03":
                register = await asyncio.to_thread(watch.get_message, True, 1.0)
        request = json.loads(register["data"])
        now = datetime.now(UTC)
        answer = {
            "request_id": request["request_id"],
            "correlation_id": request["request_id"],
            "operation": "Register",
            "service_id": "agent",
            "status": "Success",
            "payload": {"status": "Accepted", "message": None, "heartbeat_interval_ms": 1},
            "error": None,
            "state": "ready",
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "queue_time_ms": 0.0,
            "execution_time_ms": 0.0,
            "total_time_ms": 0.0,
        }
        forged = Move("", "command", ("PUBLISH", "control.rpc.response.web-03", json.dumps(answer)))
        outcome = attempt(users.client(attacker), forged)
        if attacker == "web-02":
            assert outcome == "NOPERM"
            status, health = await ctl(users.url(OPERATOR), "health", "--collector", "web-03")
            assert status == 0
            assert health["state"] in ("unregistered", "registering")
        else:  # the old recipe: the forged answer is taken, web-03 goes ready for nobody
            assert outcome == "allowed"
            announced = None
            async with asyncio.timeout(30):
                while announced is None or announced["channel"] != b"control.health.status.web-03":
                    announced = await asyncio.to_thread(watch.get_message, True, 1.0)
            assert json.loads(announced["data"])["state"] == "ready"
        proc.signal(signal.SIGTERM)
        assert await proc.wait_async(30) == 0
    watch.close()


def test_acls_cannot_stop_a_collector_trimming_a_stream_it_may_write(users: AclRedis) -> None:
    """A known gap (docs/security.md): XADD takes MAXLEN and ACLs cannot restrict arguments,
    so a collector's user can empty a shared stream (MAXLEN 0 trims its own entry too)."""
    admin = users.admin()
    key = "events.process.modify"
    for _ in range(3):
        admin.xadd(key, {"collector_id": "web-01"})
    attacker = users.client("web-02")
    attacker.xadd(key, {"collector_id": "web-02"}, maxlen=0, approximate=False)
    attacker.close()
    assert admin.xlen(key) == 0
