"""Start-up settings: CLI flags over ``PROCMOND_*`` variables over a TOML file over defaults.

The collector settings that UpdateConfig can change are validated by the
same rules (:func:`procmond.schemas.apply_config_changes`), so a value the
agent could not set cannot be set at start-up either. A bad value stops
start-up with one line naming the field (:class:`procmond.errors.StartupError`).

TOML file (``--config`` / ``PROCMOND_CONFIG``), every key optional::

    redis_url = "redis://127.0.0.1:6379/0"
    collector_id = "web-01"
    data_dir = "/var/lib/procmond"
    log_level = "info"
    log_format = "json"
    heartbeat_interval_ms = 30000
    registration_attempts = 0          # 0: retry without limit
    shutdown_timeout_ms = 30000
    stream_maxlen = 100000
    buffer_capacity = 10000
    wal_max_bytes = 536870912
    metrics_listen = "127.0.0.1:9464"  # Prometheus /metrics; absent: no endpoint

    [collector]                        # the UpdateConfig keys
    collection_interval_secs = 30
    max_events_in_flight = 1000
    collect_enhanced_metadata = true
    compute_executable_hashes = false
    max_processes = 0
    kernel_events = true               # fork/exec/exit from the kernel (cycles reconcile)
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from procmond.errors import EXIT_BAD_CONFIG, StartupError
from procmond.protocol import IDENTIFIER, IDENTIFIER_PATTERN
from procmond.schemas import (
    CollectorConfig,
    ConfigValidationError,
    apply_config_changes,
)

#: Exit code for a bad setting (the conventional "usage" status).

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")

#: Integer settings that are not collector config, with their bounds
#: (defaults are on :class:`Settings`).
_SCALARS: Final[dict[str, tuple[int, int]]] = {
    "heartbeat_interval_ms": (100, 86_400_000),
    "registration_attempts": (0, 1_000_000),
    "shutdown_timeout_ms": (1_000, 300_000),
    "stream_maxlen": (0, 1_000_000_000),
    "buffer_capacity": (10, 10_000_000),
    "wal_max_bytes": (1024 * 1024, 1 << 40),
}


def default_data_dir() -> Path:
    """``/var/lib/procmond`` for root, else the per-user state directory."""
    if os.geteuid() == 0:
        return Path("/var/lib/procmond")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "procmond"


@dataclass(frozen=True)
class Settings:
    """Everything ``procmond run`` needs to start."""

    redis_url: str | None = None
    collector_id: str = "procmond"
    data_dir: Path = field(default_factory=default_data_dir)
    log_level: str = "info"
    log_format: str = "text"
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    heartbeat_interval_ms: int = 30_000
    registration_attempts: int = 0
    shutdown_timeout_ms: int = 30_000
    stream_maxlen: int = 100_000
    buffer_capacity: int = 10_000
    wal_max_bytes: int = 512 * 1024 * 1024
    #: ``HOST:PORT`` of the Prometheus ``/metrics`` endpoint; None: off (the default).
    metrics_listen: str | None = None


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6; port 0 picks a free one) as (host, port).

    Raises ValueError naming what is wrong.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError("must be HOST:PORT, for example 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    if not host or any(c.isspace() or c in "[]/" for c in host):
        raise ValueError(f"host {host!r} is not a host name or address")
    return host, int(port_text)


def _bad(field_name: str, message: str) -> StartupError:
    return StartupError(f"invalid setting {field_name}: {message}", EXIT_BAD_CONFIG)


def load_toml(path: Path) -> dict[str, Any]:
    """Read a settings file; a missing or malformed file is a StartupError."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise StartupError(
            f"cannot read config file {path}: {exc.strerror}", EXIT_BAD_CONFIG
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise StartupError(f"config file {path} is not valid TOML: {exc}", EXIT_BAD_CONFIG) from exc


def build_settings(
    overrides: Mapping[str, Any],
    collector_overrides: Mapping[str, Any],
    file_values: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge flags/env (``overrides``, None = not given) over the file over defaults."""
    file_values = dict(file_values or {})
    file_collector = file_values.pop("collector", {})
    if not isinstance(file_collector, dict):
        raise _bad("collector", "must be a table")
    known = {
        "redis_url",
        "collector_id",
        "data_dir",
        "log_level",
        "log_format",
        "metrics_listen",
        *_SCALARS,
    }
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise _bad(unknown[0], f"unknown setting (known: {', '.join(sorted(known))})")

    def pick(name: str) -> Any:
        value = overrides.get(name)
        return file_values.get(name) if value is None else value

    values: dict[str, Any] = {}
    redis_url = pick("redis_url")
    if redis_url is not None:
        if not isinstance(redis_url, str) or not redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise _bad("redis_url", "must start with redis://, rediss:// or unix://")
        values["redis_url"] = redis_url
    collector_id = pick("collector_id")
    if collector_id is not None:
        if not isinstance(collector_id, str) or not IDENTIFIER.fullmatch(collector_id):
            raise _bad("collector_id", f"must match {IDENTIFIER_PATTERN}")
        values["collector_id"] = collector_id
    data_dir = pick("data_dir")
    if data_dir is not None:
        values["data_dir"] = Path(data_dir).expanduser()
    metrics_listen = pick("metrics_listen")
    if metrics_listen is not None:
        if not isinstance(metrics_listen, str):
            raise _bad("metrics_listen", "must be a string HOST:PORT")
        try:
            parse_listen(metrics_listen)
        except ValueError as exc:
            raise _bad("metrics_listen", str(exc)) from exc
        values["metrics_listen"] = metrics_listen
    for name, choices in (("log_level", LOG_LEVELS), ("log_format", LOG_FORMATS)):
        value = pick(name)
        if value is not None:
            if not isinstance(value, str) or value.lower() not in choices:
                raise _bad(name, f"must be one of {', '.join(choices)}")
            values[name] = value.lower()
    for name, (low, high) in _SCALARS.items():
        value = pick(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad(name, "must be an integer")
        if not low <= value <= high:
            raise _bad(name, f"must be between {low} and {high}")
        values[name] = value
    changes = {**file_collector, **{k: v for k, v in collector_overrides.items() if v is not None}}
    collector = CollectorConfig()
    if changes:
        try:
            collector = apply_config_changes(collector, changes)
        except ConfigValidationError as exc:
            first = exc.errors[0]
            raise _bad(first.field, first.message) from exc
    return Settings(collector=collector, **values)
