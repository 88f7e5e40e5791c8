"""Bad (and good) messages for the control topic, each with the answer protocol section 4 says.

A case is built by a :class:`Picker`, which makes every choice: hypothesis
(through ``st.data()``, so failures shrink to the simplest message) or a
seeded ``random.Random`` (fast, for the 5,000 / 100,000-message memory runs).
The expectation is derived from the choices, field by field, written from
the protocol and not from procmond's code:

* not JSON (random bytes, text, invalid UTF-8, nesting deeper than a JSON
  parser goes), not an object, or no usable ``client_id``: dropped, counted;
* over 1 MiB: ``INVALID_REQUEST`` when a ``client_id`` can be found, else dropped;
* an envelope field missing or of the wrong type: ``INVALID_REQUEST``;
* an operation procmond does not serve: ``UNSUPPORTED_OPERATION``;
* a deadline already past: ``DEADLINE_EXCEEDED``;
* a payload its operation does not take: ``INVALID_REQUEST``;
* UpdateConfig values that are wrong: ``VALIDATION_FAILED``;
* otherwise ``Success`` (HealthCheck, or UpdateConfig with ``validate_only``, so
  the fuzzing never changes the collector; GracefulShutdown is only sent with a
  payload that must be refused).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from hypothesis import strategies as st

T = TypeVar("T")

MIB = 1024 * 1024
SUCCESS = "Success"


@dataclass(frozen=True)
class Expect:
    """What the collector must do with one message."""

    kind: str  # the case's name, for the figures
    drop: bool = False
    request_id: str | None = None  # the id the answer carries ("" when none is echoable)
    codes: frozenset[str] = field(default_factory=frozenset)  # "Success" or error codes


class Picker(Protocol):
    """Makes the choices of a case."""

    def choice(self, options: Sequence[T]) -> T: ...
    def integer(self, low: int, high: int) -> int: ...
    def json_value(self) -> Any: ...
    def text(self, max_size: int) -> str: ...


class RandomPicker:
    """Choices from a seeded ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choice(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def json_value(self, depth: int = 0) -> Any:
        kind = self.rng.randrange(7 if depth < 3 else 5)
        if kind == 0:
            return None
        if kind == 1:
            return self.rng.random() < 0.5
        if kind == 2:
            return self.rng.randint(-(2**40), 2**40)
        if kind == 3:
            return self.rng.uniform(-1e6, 1e6)
        if kind == 4:
            return self.text(20)
        if kind == 5:
            return [self.json_value(depth + 1) for _ in range(self.rng.randrange(4))]
        return {self.text(8): self.json_value(depth + 1) for _ in range(self.rng.randrange(4))}

    def text(self, max_size: int) -> str:
        alphabet = 'abcXYZ019 _-"\\/{}:,é漢\u2028\U0001f600'
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randrange(max_size + 1)))


class HypothesisPicker:
    """Choices drawn from hypothesis (``st.data()``)."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def choice(self, options: Sequence[T]) -> T:
        return self.data.draw(st.sampled_from(options))

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def json_value(self) -> Any:
        scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
        return self.data.draw(
            st.recursive(
                scalars,
                lambda inner: (
                    st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4)
                ),
                max_leaves=12,
            )
        )

    def text(self, max_size: int) -> str:
        return self.data.draw(st.text(max_size=max_size))


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fresh_id() -> str:
    return uuid.uuid4().hex


# -- the pieces of a valid envelope and their bad variants ---------------------

_BAD_TYPES: tuple[Any, ...] = (42, 3.5, True, None, ["x"], {"a": 1})
_BAD_TIMES: tuple[Any, ...] = (
    "yesterday",
    "2026-13-45T99:99:99Z",
    "2026-11-26T07:00:00",  # no offset: ambiguous, refused
    1_700_000_000,
    "",
)
_UNKNOWN_OPERATIONS: tuple[str, ...] = (
    "Register",
    "Deregister",
    "healthcheck",
    "DropTables",
    "HealthCheck ",
    "",
    "x" * 128,
)
_VALID_CHANGES: tuple[dict[str, Any], ...] = (
    {"collection_interval_secs": 1},
    {"collection_interval_secs": 2.5},
    {"max_events_in_flight": 100_000},
    {"collect_enhanced_metadata": False},
    {"compute_executable_hashes": True, "max_processes": 0},
)
_INVALID_CHANGES: tuple[dict[str, Any], ...] = (
    {},
    {"collection_interval_secs": 0},
    {"collection_interval_secs": 3601},
    {"collection_interval_secs": "5"},
    {"max_events_in_flight": 1.5},
    {"max_processes": True},
    {"max_processes": -1},
    {"collect_enhanced_metadata": "yes"},
    {"no_such_setting": 1},
    {"\ud800": 1},  # a lone surrogate as the unknown key
)


def envelope_case(pick: Picker, client_id: str, target: str) -> tuple[bytes, Expect]:
    """A request envelope with at most one fault, and its expected answer."""
    request_id = _fresh_id()
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "request_id": request_id,
        "client_id": client_id,
        "target": target,
        "operation": "HealthCheck",
        "payload": None,
        "timestamp": _stamp(now),
        "deadline": _stamp(now + timedelta(seconds=10)),
    }
    fault = pick.choice(
        (
            "none",
            "far-deadline",
            "none-offset",
            "none-extra-field",
            "none-huge-target",
            "none-correlation",
            "update-valid",
            "update-invalid",
            "update-bad-payload",
            "shutdown-bad-payload",
            "health-bad-payload",
            "wrong-type",
            "missing",
            "bad-time",
            "long-request-id",
            "surrogate-request-id",
            "unknown-operation",
            "past-deadline",
            "nested-payload",
        )
    )
    ok = Expect(fault, request_id=request_id, codes=frozenset({SUCCESS}))
    invalid = Expect(fault, request_id=request_id, codes=frozenset({"INVALID_REQUEST"}))
    expect = ok
    if fault == "none":
        body["payload"] = pick.choice((None, {}))
    elif fault == "far-deadline":
        # Protocol section 10: a deadline more than 300 s after the timestamp.
        body["deadline"] = pick.choice(
            (
                "9999-12-31T23:59:59.999999Z",
                "2999-01-01T00:00:00Z",
                _stamp(now + timedelta(seconds=301)),
            )
        )
        expect = invalid
    elif fault == "none-offset":
        body["deadline"] = (
            (now + timedelta(seconds=10))
            .astimezone(pick.choice((UTC, _zone(14), _zone(-12))))
            .isoformat()
        )
    elif fault == "none-extra-field":
        body[pick.choice(("x", "version", "priority", "\u2028"))] = pick.json_value()
    elif fault == "none-huge-target":
        body["target"] = "t" * pick.integer(10_000, 400_000)
    elif fault == "none-correlation":
        body["correlation_id"] = pick.text(200)
        if not 1 <= len(body["correlation_id"]) <= 128:  # protocol sections 3 and 10
            expect = invalid
    elif fault == "update-valid":
        body["operation"] = "UpdateConfig"
        body["payload"] = {"changes": pick.choice(_VALID_CHANGES), "validate_only": True}
    elif fault == "update-invalid":
        body["operation"] = "UpdateConfig"
        body["payload"] = {
            "changes": pick.choice(_INVALID_CHANGES),
            "validate_only": pick.choice((True, False)),
        }
        expect = Expect(fault, request_id=request_id, codes=frozenset({"VALIDATION_FAILED"}))
    elif fault == "update-bad-payload":
        body["operation"] = "UpdateConfig"
        body["payload"] = pick.choice(
            (
                None,
                {},
                {"changes": [1]},
                {"changes": {"max_processes": 1}, "validate_only": "no"},
                {"changes": {"max_processes": 1}, "validate_only": True, "extra": 1},
                {"validate_only": True},
            )
        )
        expect = invalid
    elif fault == "shutdown-bad-payload":
        body["operation"] = "GracefulShutdown"
        body["payload"] = pick.choice(
            (
                {"graceful_timeout_ms": 5},
                {"graceful_timeout_ms": 10**9},
                {"graceful_timeout_ms": "30000"},
                {"graceful_timeout_ms": 30000.0},
                {"reason": 7},
                {"reason": None, "force": True},
            )
        )
        expect = invalid
    elif fault == "health-bad-payload":
        value = pick.json_value()
        body["payload"] = {"unexpected": value}
        expect = invalid
    elif fault == "wrong-type":
        name = pick.choice(
            ("request_id", "target", "operation", "payload", "timestamp", "deadline")
        )
        value = pick.choice(_BAD_TYPES)
        if name == "payload" and (value is None or isinstance(value, dict)):
            value = "not an object"
        body[name] = value
        echoed = request_id if name != "request_id" else ""
        expect = Expect(fault, request_id=echoed, codes=frozenset({"INVALID_REQUEST"}))
    elif fault == "missing":
        name = pick.choice(("request_id", "target", "operation", "timestamp", "deadline"))
        del body[name]
        echoed = request_id if name != "request_id" else ""
        expect = Expect(fault, request_id=echoed, codes=frozenset({"INVALID_REQUEST"}))
    elif fault == "bad-time":
        body[pick.choice(("timestamp", "deadline"))] = pick.choice(_BAD_TIMES)
        expect = invalid
    elif fault == "long-request-id":
        body["request_id"] = request_id + "r" * pick.integer(129, 5000)
        # Protocol section 10: a value over the limit is not echoed.
        expect = Expect(fault, request_id="", codes=frozenset({"INVALID_REQUEST"}))
    elif fault == "surrogate-request-id":
        body["request_id"] = request_id[:8] + "\ud800"
        expect = Expect(fault, request_id="", codes=frozenset({"INVALID_REQUEST"}))
    elif fault == "unknown-operation":
        body["operation"] = pick.choice(_UNKNOWN_OPERATIONS)
        expect = Expect(fault, request_id=request_id, codes=frozenset({"UNSUPPORTED_OPERATION"}))
    elif fault == "past-deadline":
        body["operation"] = pick.choice(("HealthCheck", "UpdateConfig"))
        body["payload"] = (
            {"changes": {"max_processes": 7}} if body["operation"] != "HealthCheck" else None
        )
        body["deadline"] = pick.choice(
            (
                _stamp(now - timedelta(seconds=1)),
                "1970-01-01T00:00:00Z",
                "0001-01-01T00:00:00+14:00",
            )
        )
        expect = Expect(fault, request_id=request_id, codes=frozenset({"DEADLINE_EXCEEDED"}))
    elif fault == "nested-payload":
        depth = pick.integer(2, 400)
        body["payload"] = {"deep": _nested(depth)}
        expect = invalid
    # ensure_ascii: a lone surrogate travels as a \ud800 escape, valid JSON text.
    return json.dumps(body, ensure_ascii=True).encode(), expect


def _zone(hours: int) -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=hours))


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"n": value}
    return value


def raw_case(pick: Picker, client_id: str, target: str) -> tuple[bytes, Expect]:
    """A message that is not a usable request at all, or is over-size."""
    kind = pick.choice(
        (
            "random-bytes",
            "text",
            "non-object",
            "no-client",
            "bad-client",
            "invalid-utf8",
            "too-deep",
            "oversize-with-client",
            "oversize-without-client",
        )
    )
    drop = Expect(kind, drop=True)
    if kind == "random-bytes":
        size = pick.integer(0, 300)
        data = bytes(pick.integer(0, 255) for _ in range(size))
        if _is_object_with_client(data):  # pragma: no cover - astronomically unlikely
            data = b"\xff" + data
        return data, drop
    if kind == "text":
        return pick.choice(("", "hello", "{", "{'single': 'quotes'}", "NaN", "}{")).encode(), drop
    if kind == "non-object":
        value = pick.choice(([], [1, 2], "a string", 12, None, True, [{"client_id": client_id}]))
        return json.dumps(value).encode(), drop
    if kind == "no-client":
        body_nc: dict[str, Any] = {
            "request_id": _fresh_id(),
            "operation": "HealthCheck",
            "payload": None,
        }
        return json.dumps(body_nc).encode(), drop
    if kind == "bad-client":
        bad: Any = pick.choice(
            ("", "UPPER", "-lead", "a" * 64, "sp ace", "dot.ted", 17, None, ["x"])
        )
        body: dict[str, Any] = {
            "request_id": _fresh_id(),
            "client_id": bad,
            "operation": "HealthCheck",
        }
        return json.dumps(body).encode(), drop
    if kind == "invalid-utf8":
        envelope, _ = envelope_case(_Fixed(), client_id, target)
        cut = envelope.index(b'"target"')
        return envelope[:cut] + b'"junk": "\xff\xfe\xc3", ' + envelope[cut:], drop
    if kind == "too-deep":
        depth = pick.integer(100_000, 200_000)
        prefix = json.dumps({"client_id": client_id, "request_id": _fresh_id()})[:-1]
        return (prefix + ', "payload": ' + "[" * depth + "]" * depth + "}").encode(), drop
    request_id = _fresh_id()
    padding = "p" * (MIB + pick.integer(1, 4096))
    if kind == "oversize-with-client":
        body = {"client_id": client_id, "request_id": request_id, "operation": "HealthCheck"}
        body["padding"] = padding
        expect = Expect(kind, request_id=request_id, codes=frozenset({"INVALID_REQUEST"}))
        return json.dumps(body).encode(), expect
    return json.dumps({"request_id": request_id, "padding": padding}).encode(), drop


class _Fixed:
    """The first option of every choice: a plain valid HealthCheck."""

    def choice(self, options: Sequence[T]) -> T:
        return options[0]

    def integer(self, low: int, high: int) -> int:
        return low

    def json_value(self) -> Any:
        return None

    def text(self, max_size: int) -> str:
        return ""


def _is_object_with_client(data: bytes) -> bool:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and "client_id" in value


def any_case(pick: Picker, client_id: str, target: str) -> tuple[bytes, Expect]:
    """A raw case one time in four, else an envelope case."""
    if pick.choice((False, False, False, True)):
        return raw_case(pick, client_id, target)
    return envelope_case(pick, client_id, target)
