"""Reliability under bad input and load (issue 5, faults 4, 5 and 6), end to end.

Bad input: hypothesis-generated and seeded-random messages on
``control.collector.{id}`` (see fuzz_messages.py for the oracle); every
answerable one must get the code protocol section 4 gives it, every other
one must be counted in ``rpc_malformed_total``, the collector must stay
``ready`` with its configuration untouched, and its RSS must stay flat.

Load: bursts of thousands of concurrent requests from many clients; each is
answered exactly once, with Success or BUSY, before its deadline, and the
mailbox never holds more than its bound.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from contract_agent import ContractAgent, envelope
from daemon_process import DaemonProcess
from e2e_support import daemon, new_id, running_agent
from fuzz_messages import SUCCESS, Expect, HypothesisPicker, RandomPicker, any_case
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis_fixtures import running_redis, short_dir
from reliability_support import counts, record, rss_kib

from procmond.embedded import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

#: Messages published before waiting for their answers (and one HealthCheck probe).
BATCH = 100
#: Heavy messages (over 64 kB) are kept to about one in 400 in the bulk runs.
HEAVY_BYTES = 64 * 1024


@dataclass
class FuzzTarget:
    """One ready collector, its agent and the event loop they live on."""

    runner: asyncio.Runner
    agent: ContractAgent
    proc: DaemonProcess
    cid: str
    sent: int = 0
    answered: int = 0
    dropped: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)

    def run(self, cases: list[tuple[bytes, Expect]]) -> None:
        """Send ``cases`` and check every answer and every drop."""
        self.runner.run(asyncio.wait_for(self._run(cases), 60))

    async def health(self) -> dict[str, Any]:
        answer = await self.agent.call(self.cid, "HealthCheck", None, timeout=10)
        assert answer["status"] == "Success", answer
        payload: dict[str, Any] = answer["payload"]
        return payload

    async def _run(self, cases: list[tuple[bytes, Expect]]) -> None:
        before = (await self.health())["metrics"]["rpc_malformed_total"]
        seen = len(self.agent.responses.items)
        for data, _ in cases:
            await self.agent.publish_raw(self.cid, data)
        wanted = Counter(e.request_id for _, e in cases if not e.drop)
        drops = sum(1 for _, e in cases if e.drop)

        def got(items: list[Any]) -> Counter[str]:
            return Counter(str(r.message.get("request_id")) for r in items[seen:])

        def complete(items: list[Any]) -> bool:
            have = got(items)
            return all(have[rid] >= n for rid, n in wanted.items() if rid is not None)

        await self.agent.responses.wait(complete, timeout=30)
        health = await self.health()  # the probe: taken after every message above
        assert health["state"] == "ready", health
        assert health["metrics"]["rpc_malformed_total"] - before == drops, [
            e.kind for _, e in cases if e.drop
        ]
        answers: dict[str, list[dict[str, Any]]] = {}
        for item in self.agent.responses.items[seen:]:
            answers.setdefault(str(item.message.get("request_id")), []).append(item.message)
        for data, expect in cases:
            self.sent += 1
            self.by_kind[expect.kind] += 1
            if expect.drop:
                self.dropped += 1
                continue
            assert expect.request_id is not None
            answer = answers[expect.request_id].pop(0)
            code = SUCCESS if answer["status"] == SUCCESS else answer["error"]["code"]
            assert code in expect.codes | {"BUSY"}, (expect, code, answer, data[:300])
            self.answered += 1
        extra = {k: v for k, v in answers.items() if v and k in wanted}
        assert not extra, f"answered more than once: {extra}"


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[FuzzTarget]:
    """A ready collector for the whole module (the fuzz tests are synchronous)."""
    base = short_dir("pmd-fuzz-")
    with running_redis() as server, asyncio.Runner() as runner:
        agent = ContractAgent(server.url, client_id="fuzzer")
        runner.run(agent.start())
        cid = new_id("fz")
        proc = DaemonProcess(base / "data", redis_url=server.url, collector_id=cid)
        with proc:
            runner.run(agent.wait_for_state(cid, "ready", timeout=15))
            target = FuzzTarget(runner, agent, proc, cid)
            yield target
            health = runner.run(target.health())
            # Nothing of the fuzzing changed the collector or moved its lifecycle.
            assert health["state"] == "ready"
            assert health["config_version"] == 1, health
            assert agent.states(cid) == ["ready"]
            assert health["metrics"]["rpc_malformed_total"] == target.dropped
            record(
                "bad-input-module",
                injected=target.sent,
                requests_sent=target.sent,
                answered=target.answered,
                dropped_and_counted=target.dropped,
                rpc_malformed_total=health["metrics"]["rpc_malformed_total"],
                config_version=health["config_version"],
                state=health["state"],
            )
            runner.run(agent.call(cid, "GracefulShutdown", None, timeout=30))
            assert proc.wait(20) == 0
        runner.run(agent.close())
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    "run",
    [
        pytest.param("quick"),
        pytest.param("soak", marks=[pytest.mark.soak, pytest.mark.timeout(3600)]),
    ],
)
@settings(deadline=None)  # examples: the profile's (ci 200, soak 5000)
@given(data=st.data())
def test_hypothesis_messages_get_the_protocol_answer(
    fuzz_target: FuzzTarget, run: str, data: st.DataObject
) -> None:
    """Each hypothesis-built message, alone: the code of protocol section 4, or a counted drop."""
    target = fuzz_target
    case = any_case(
        HypothesisPicker(data), target.agent.client_id, f"control.collector.{target.cid}"
    )
    target.run([case])


@pytest.mark.parametrize("messages", counts(5_000, 100_000, soak_timeout=3600))
def test_fuzzed_flood_keeps_memory_flat(fuzz_target: FuzzTarget, messages: int) -> None:
    """Seeded random bad messages by the thousand: every one answered right or counted, the
    collector stays ready, and its RSS stays flat (bounded growth, reported)."""
    target = fuzz_target
    rng = random.Random(20261126)
    pick = RandomPicker(rng)
    client, topic = target.agent.client_id, f"control.collector.{target.cid}"
    sent_before, dropped_before = target.sent, target.dropped
    answered_before = target.answered
    rss_start = rss_kib(target.proc.pid)
    rss_marks: list[int] = []
    started = time.monotonic()
    sent = 0
    bytes_sent = 0
    while sent < messages:
        batch: list[tuple[bytes, Expect]] = []
        while len(batch) < min(BATCH, messages - sent):
            data, expect = any_case(pick, client, topic)
            if len(data) > HEAVY_BYTES and rng.random() < 0.9:
                continue
            batch.append((data, expect))
            bytes_sent += len(data)
        target.run(batch)
        sent += len(batch)
        if sent % max(messages // 10, BATCH) < BATCH:
            rss_marks.append(rss_kib(target.proc.pid))
    rss_end = rss_kib(target.proc.pid)
    growth_kib = rss_end - rss_start
    # After the first fifth (the 10,000-answer repeat cache filling), nothing should grow.
    warm = rss_marks[len(rss_marks) // 5] if rss_marks else rss_start
    record(
        "bad-input",
        injected=messages,
        bytes_sent=bytes_sent,
        answered=target.answered - answered_before,
        dropped_and_counted=target.dropped - dropped_before,
        requests_sent=target.sent - sent_before,
        rss_start_kib=rss_start,
        rss_end_kib=rss_end,
        rss_growth_kib=growth_kib,
        rss_growth_after_warmup_kib=rss_end - warm,
        seconds=round(time.monotonic() - started, 1),
        kinds=dict(sorted(target.by_kind.items())),
    )
    assert growth_kib < 30 * 1024, (rss_start, rss_end)
    if messages >= 50_000:
        assert rss_end - warm < 10 * 1024, rss_marks


# -- load -------------------------------------------------------------------------


class LoadClient:
    """One caller with its own connection and reply topic."""

    def __init__(self, url: str, client_id: str) -> None:
        self.client_id = client_id
        self.redis = Redis.from_url(url)
        self.pubsub = self.redis.pubsub()
        self.answers: dict[str, list[dict[str, Any]]] = {}
        self.changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pubsub.subscribe(f"control.rpc.response.{self.client_id}")
        async with asyncio.timeout(5):
            while (await self.pubsub.get_message(timeout=1.0)) is None:
                pass  # the subscribe confirmation
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            message = await self.pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "message":
                body = json.loads(message["data"])
                body["_received"] = datetime.now(UTC)
                self.answers.setdefault(body["request_id"], []).append(body)
                self.changed.set()

    async def close(self) -> None:
        if self._reader is not None:
            for _ in range(50):  # cancel until gone: see ContractAgent.close
                if self._reader.done():
                    break
                self._reader.cancel()
                await asyncio.wait({self._reader}, timeout=0.1)
        async with asyncio.timeout(5):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
            await self.redis.aclose()


def _deadline_of(request: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(request["deadline"].replace("Z", "+00:00"))


@pytest.mark.parametrize(
    ("bursts", "clients", "per_client"),
    [
        pytest.param(1, 20, 100, id="quick-2000"),
        pytest.param(
            5, 50, 200, id="soak-50000", marks=[pytest.mark.soak, pytest.mark.timeout(1800)]
        ),
    ],
)
async def test_bursts_of_concurrent_requests_each_answered_once(
    tmp_path: Path, fresh_redis: RedisServer, bursts: int, clients: int, per_client: int
) -> None:
    """Thousands of concurrent requests from many clients: each answered exactly once,
    Success or BUSY, before its deadline; none lost; the mailbox stays within its bound."""
    cid = new_id("ld")
    statuses: Counter[str] = Counter()
    total = 0
    latest_ms = 0.0
    async with running_agent(fresh_redis.url) as agent:
        with daemon(tmp_path, fresh_redis.url, cid) as proc:
            await agent.wait_for_state(cid, "ready", timeout=15)
            callers = [LoadClient(fresh_redis.url, f"load-{i:03d}") for i in range(clients)]
            await asyncio.gather(*(c.start() for c in callers))
            try:
                for _burst in range(bursts):
                    requests: list[tuple[LoadClient, dict[str, Any]]] = []
                    for caller in callers:
                        for n in range(per_client):
                            operation, payload = (
                                (
                                    "UpdateConfig",
                                    {"changes": {"max_processes": 0}, "validate_only": True},
                                )
                                if n % 10 == 9
                                else ("HealthCheck", None)
                            )
                            body = envelope(
                                operation,
                                payload,
                                client_id=caller.client_id,
                                target=f"control.collector.{cid}",
                                request_id=uuid.uuid4().hex,
                                timeout=30,
                            )
                            requests.append((caller, body))

                    async def fire(caller: LoadClient, bodies: list[dict[str, Any]]) -> None:
                        # One pipeline per client: its requests leave back to back.
                        pipe = caller.redis.pipeline(transaction=False)
                        for body in bodies:
                            pipe.publish(f"control.collector.{cid}", json.dumps(body).encode())
                        await pipe.execute()

                    await asyncio.gather(
                        *(fire(c, [b for o, b in requests if o is c]) for c in callers)
                    )
                    total += len(requests)
                    async with asyncio.timeout(60):
                        for caller, body in requests:
                            while body["request_id"] not in caller.answers:
                                caller.changed.clear()
                                await caller.changed.wait()
                    for caller, body in requests:
                        got = caller.answers[body["request_id"]]
                        answer = got[0]
                        code = SUCCESS if answer["status"] == SUCCESS else answer["error"]["code"]
                        statuses[code] += 1
                        assert code in (SUCCESS, "BUSY"), answer
                        answered_at = datetime.fromisoformat(
                            answer["timestamp"].replace("Z", "+00:00")
                        )
                        assert answered_at <= _deadline_of(body), (answer, body["deadline"])
                        latest_ms = max(latest_ms, answer["total_time_ms"])
                # Duplicates would have arrived by now: the probe's answer comes after them.
                await agent.call(cid, "HealthCheck", None, timeout=10)
                twice = sum(len(v) - 1 for c in callers for v in c.answers.values())
                assert twice == 0
                answered = sum(len(c.answers) for c in callers)
                assert answered == total
            finally:
                await asyncio.gather(*(c.close() for c in callers))
            shutdown = await agent.call(cid, "GracefulShutdown", None, timeout=30)
            assert shutdown["status"] == SUCCESS
            assert await proc.wait_async(20) == 0
            drain = [r["message"] for r in proc.log_records() if "mailbox peak" in r["message"]]
    assert drain, "no drain line"
    peak = re.search(r"mailbox peak (\d+) of (\d+), (\d+) requests answered BUSY", drain[-1])
    assert peak is not None, drain
    high, bound, busy = (int(g) for g in peak.groups())
    assert high <= bound
    assert busy == statuses["BUSY"]
    record(
        "load",
        injected=bursts,
        clients=clients,
        requests_sent=total,
        requests_answered=answered,
        answered_twice=twice,
        by_code=dict(statuses),
        mailbox_peak=high,
        mailbox_bound=bound,
        slowest_total_ms=latest_ms,
    )
