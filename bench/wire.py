"""The agent's side of the wire for the benchmarks, written from protocol.md with redis-py.

* :class:`MinimalAgent` answers ``Register`` (Accepted) and ``Deregister`` on
  ``control.registration.{collector_id}`` (protocol version 2, section 2: it
  pattern-subscribes ``control.registration.*`` and answers only a request
  whose ``client_id`` is its topic's collector id) from a thread, and records the monotonic
  time of each lifecycle announcement (``ready``, ``draining``,
  ``deregistered``). ``time.monotonic()`` is one clock for every process on
  Linux, so these times compare with the benchmark's own.
* :class:`Caller` publishes a request and waits for its answer on a reply
  channel subscribed beforehand: the RPC benchmark's client, used unchanged
  against procmond and against the echo baseline so that only the responder
  differs between the two series.

Both use the synchronous redis-py client: the client side is the same for
every series and costs as little as possible.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import redis

#: Protocol version 2, section 2: one registration topic per collector.
REGISTRATION_PREFIX: Final = "control.registration."
REGISTRATION_PATTERN: Final = REGISTRATION_PREFIX + "*"
STATUS_PREFIX: Final = "control.health.status."


def rfc3339(moment: datetime) -> str:
    """The protocol's timestamp spelling."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def collector_topic(collector_id: str) -> str:
    """Where requests to a collector go."""
    return f"control.collector.{collector_id}"


def response_topic(client_id: str) -> str:
    """Where answers to ``client_id`` go."""
    return f"control.rpc.response.{client_id}"


def registration_topic(collector_id: str) -> str:
    """Where ``collector_id`` sends Register and Deregister (protocol v2)."""
    return REGISTRATION_PREFIX + collector_id


def request(
    operation: str,
    payload: Any,
    *,
    client_id: str,
    target: str,
    request_id: str | None = None,
    timeout: float = 10.0,
) -> tuple[str, bytes]:
    """A request envelope (protocol section 3): its id and its bytes."""
    now = datetime.now(UTC)
    request_id = request_id or uuid.uuid4().hex
    body = {
        "request_id": request_id,
        "client_id": client_id,
        "target": target,
        "operation": operation,
        "payload": payload,
        "timestamp": rfc3339(now),
        "deadline": rfc3339(now + timedelta(seconds=timeout)),
    }
    return request_id, json.dumps(body, separators=(",", ":")).encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Caller:
    """Publish on one channel, wait for the matching reply on another (subscribed first)."""

    def __init__(self, url: str, reply_channel: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=30)
        self._pubsub = self._redis.pubsub()  # type: ignore[no-untyped-call]  # redis-py: unannotated
        self._pubsub.subscribe(reply_channel)
        deadline = time.monotonic() + 10
        while True:  # wait for the server's confirmation: no reply can be missed after it
            message = self._pubsub.get_message(timeout=1.0)
            if message is not None and _text(message["type"]) == "subscribe":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no subscribe confirmation for {reply_channel}")

    def publish(self, channel: str, data: bytes) -> int:
        """PUBLISH; the number of subscribers that got it."""
        return int(self._redis.publish(channel, data))

    def call(self, channel: str, data: bytes, match: bytes, timeout: float = 10.0) -> bytes:
        """Publish ``data``; return the first reply containing ``match`` (stale ones skipped).

        Raises LookupError when nobody listens on ``channel`` and TimeoutError
        when no reply came in time.
        """
        if self.publish(channel, data) == 0:
            raise LookupError(f"nobody subscribed to {channel}")
        return self.wait_reply(match, timeout)

    def wait_reply(self, match: bytes, timeout: float) -> bytes:
        """The next reply containing ``match``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no reply in time")
            message = self._pubsub.get_message(timeout=remaining)
            if message is None or _text(message["type"]) != "message":
                continue
            data: bytes = message["data"]
            if match in data:
                return data

    @property
    def redis(self) -> redis.Redis:
        """The command connection."""
        return self._redis

    def close(self) -> None:
        """Close both connections."""
        self._pubsub.close()
        self._redis.close()


class MinimalAgent:
    """Accepts every Register and Deregister; records lifecycle announcements."""

    def __init__(self, url: str, client_id: str = "bench-agent") -> None:
        self.client_id = client_id
        self._redis = redis.Redis.from_url(url, socket_timeout=30)
        self._pubsub = self._redis.pubsub()  # type: ignore[no-untyped-call]  # redis-py: unannotated
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._announced: list[tuple[float, str, str]] = []  # (monotonic, collector, state)
        self._changed = threading.Condition(self._lock)
        self.registers = 0
        self.deregisters = 0
        self.misaddressed = 0  # registration requests not from their topic's collector
        self._thread = threading.Thread(target=self._serve, name="bench-agent", daemon=True)

    def start(self) -> MinimalAgent:
        """Subscribe (confirmed by the server) and start answering."""
        self._pubsub.psubscribe(REGISTRATION_PATTERN, STATUS_PREFIX + "*")
        confirmed = 0
        deadline = time.monotonic() + 10
        while confirmed < 2:
            message = self._pubsub.get_message(timeout=1.0)
            if message is not None and _text(message["type"]) in ("subscribe", "psubscribe"):
                confirmed += 1
            if time.monotonic() > deadline:
                raise TimeoutError("the agent's subscriptions were not confirmed")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the connections."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._pubsub.close()
        self._redis.close()

    def __enter__(self) -> MinimalAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def announcement_time(self, collector_id: str, state: str) -> float | None:
        """Monotonic receive time of the first ``state`` announcement, or None."""
        with self._lock:
            for at, who, what in self._announced:
                if who == collector_id and what == state:
                    return at
        return None

    def wait_for(self, collector_id: str, state: str, timeout: float) -> float:
        """Block until ``state`` was announced; its monotonic receive time."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for at, who, what in self._announced:
                    if who == collector_id and what == state:
                        return at
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{collector_id} did not announce {state!r} in time")
                self._changed.wait(remaining)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.2)
            except (redis.RedisError, OSError):
                if self._stop.is_set():
                    return
                time.sleep(0.05)
                continue
            if message is None:
                continue
            at = time.monotonic()
            kind = _text(message["type"])
            try:
                body = json.loads(message["data"])
            except (TypeError, ValueError):
                continue
            if not isinstance(body, dict):
                continue
            if kind != "pmessage":
                continue
            channel = _text(message["channel"])
            if channel.startswith(STATUS_PREFIX):
                with self._changed:
                    who = channel.removeprefix(STATUS_PREFIX)
                    self._announced.append((at, who, str(body.get("state"))))
                    self._changed.notify_all()
            elif channel.startswith(REGISTRATION_PREFIX):
                if body.get("client_id") == channel.removeprefix(REGISTRATION_PREFIX):
                    self._on_registration(body)
                else:
                    self.misaddressed += 1

    def _on_registration(self, body: dict[str, Any]) -> None:
        operation = body.get("operation")
        if operation == "Register":
            self.registers += 1
            payload: dict[str, Any] = {
                "status": "Accepted",
                "message": None,
                "heartbeat_interval_ms": None,
            }
        elif operation == "Deregister":
            self.deregisters += 1
            payload = {"status": "Accepted"}
        else:
            return
        now = rfc3339(datetime.now(UTC))
        response = {
            "request_id": body.get("request_id"),
            "correlation_id": body.get("correlation_id") or body.get("request_id"),
            "operation": operation,
            "service_id": self.client_id,
            "status": "Success",
            "payload": payload,
            "error": None,
            "timestamp": now,
            "queue_time_ms": 0,
            "execution_time_ms": 0,
            "total_time_ms": 0,
        }
        self._redis.publish(
            response_topic(str(body.get("client_id"))), json.dumps(response).encode()
        )


def health(caller: Caller, collector_id: str, client_id: str) -> dict[str, Any]:
    """One HealthCheck answer's payload (empty when the answer has none)."""
    topic = collector_topic(collector_id)
    request_id, data = request("HealthCheck", None, client_id=client_id, target=topic)
    reply = json.loads(caller.call(topic, data, request_id.encode()))
    payload: dict[str, Any] = reply.get("payload") or {}
    return payload
