"""``procmond ctl``: health, config and shutdown of a collector, from a terminal or a script.

Exit status (also in ``procmond ctl --help``): see :data:`EXIT_STATUS`.

A light import: the daemon's parts, the storage, the collection and psutil
are never loaded (``tests/test_light_imports.py``); topic names come from
:mod:`procmond.topics` and the protocol's enums from :mod:`procmond.protocol`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from procmond.bus.redis import BusError, RedisBus
from procmond.client import CallTimeout, NoResponder, RpcClient
from procmond.discovery import display_url
from procmond.protocol import Status
from procmond.text_safety import escape

EXIT_SUCCESS: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_TIMEOUT: Final = 3
EXIT_UNAVAILABLE: Final = 4
EXIT_NO_RESPONDER: Final = 5
EXIT_NO_REDIS: Final = 6
EXIT_STATUS: Final = {
    EXIT_SUCCESS: "Success",
    EXIT_ERROR: "the collector answered Error (bad request, invalid state, validation failed)",
    EXIT_USAGE: "bad command line",
    EXIT_TIMEOUT: "Timeout: answered Timeout, or no answer before --timeout",
    EXIT_UNAVAILABLE: "Unavailable: BUSY or SHUTTING_DOWN",
    EXIT_NO_RESPONDER: "no collector listening on its control topic",
    EXIT_NO_REDIS: "Redis not reachable",
}
_STATUS_EXIT: Final[dict[str, int]] = {
    Status.SUCCESS: EXIT_SUCCESS,
    Status.ERROR: EXIT_ERROR,
    Status.TIMEOUT: EXIT_TIMEOUT,
    Status.UNAVAILABLE: EXIT_UNAVAILABLE,
}


class UsageError(ValueError):
    """A bad KEY=VALUE or option; the CLI turns it into exit 2."""


def parse_assignments(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is JSON when it parses (numbers, true/false), else text."""
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"expected KEY=VALUE, got {pair!r}")
        try:
            changes[key] = json.loads(raw)
        except ValueError:
            changes[key] = raw
    return changes


def _fmt_health(payload: dict[str, Any]) -> list[str]:
    def p(key: str) -> str:
        return escape(payload.get(key))

    metrics = payload.get("metrics", {})

    def m(key: str) -> str:
        return escape(metrics.get(key))

    reasons = [escape(r) for r in payload.get("reasons") or []]
    last_ms = metrics.get("last_cycle_ms")
    last_cycle = "-" if last_ms is None else f"{last_ms:.0f} ms"
    verdict = f"{p('status')}: {'; '.join(reasons)}" if reasons else p("status")
    uptime = payload.get("uptime_seconds") or 0
    capture = (
        []
        if metrics.get("capture_mode") is None  # a version 1 collector
        else [
            f"  capture mode {m('capture_mode')}, kernel events {m('kernel_events')} "
            f"({m('kernel_events_lost')} lost, {m('partial_events')} partial)"
        ]
    )
    return [
        f"{p('collector_id')} on {p('hostname')} "
        f"(pid {p('pid')}, boot {p('boot_id')[:12]}, v{p('version')})",
        f"  state {p('state')}, {verdict}",
        *capture,
        f"  bus {p('connection_status')}, up {uptime:.0f} s, "
        f"config v{p('config_version')}, last collection {p('last_collection')}",
        f"  processes {m('processes_collected')}, events published {m('events_published')}, "
        f"buffer {m('buffer_level_percent')} %, log pending {m('wal_pending')}",
        f"  cycles {m('collection_cycles')} ({m('collection_errors')} failed, "
        f"last {last_cycle}), heartbeats {m('heartbeats_sent')}, "
        f"malformed requests {m('rpc_malformed_total')}",
    ]


def summarize(response: dict[str, Any]) -> str:
    """A readable summary of a response.

    Every value in it came from the wire: each is escaped
    (:func:`procmond.text_safety.escape`), so the only line breaks are ours.
    """
    operation = response.get("operation")
    status = escape(response.get("status"))
    error = response.get("error")
    if error:
        text = f"{status} {escape(error.get('code'))}: {escape(error.get('message'))}"
        context = error.get("context") or {}
        for item in context.get("errors", []):
            text += f"\n  {escape(item.get('field'))}: {escape(item.get('message'))}"
        if "accepted" in context:
            accepted = ", ".join(escape(a) for a in context["accepted"])
            text += f"\n  state {escape(context.get('state'))} accepts: {accepted}"
        if "retry_after_ms" in context:
            text += f"\n  retry after {escape(context['retry_after_ms'])} ms"
        return text
    payload = response.get("payload") or {}
    if operation == "HealthCheck":
        return "\n".join(_fmt_health(payload))
    if operation == "UpdateConfig":
        changed = [escape(c) for c in payload.get("changed_fields") or []]
        config = " ".join(
            f"{escape(k)}={json.dumps(v)}" for k, v in (payload.get("config") or {}).items()
        )
        return (
            f"config version {escape(payload.get('config_version'))}; "
            f"changed: {', '.join(changed) if changed else 'nothing'}\n  {config}"
        )
    if operation == "GracefulShutdown":
        return (
            f"drained in {escape(payload.get('drain_ms'))} ms: "
            f"{escape(payload.get('events_flushed'))} events "
            f"flushed, {escape(payload.get('wal_pending'))} left in the log"
            + (
                ""
                if payload.get("complete")
                else " (timed out: the rest is replayed on next start)"
            )
        )
    return json.dumps(response, indent=2)


async def ctl_call(
    url: str,
    collector_id: str,
    operation: str,
    payload: dict[str, Any] | None,
    *,
    timeout: float,
    json_output: bool,
    echo: Any,
) -> int:
    """Connect, call, print, and return the exit status."""
    bus = RedisBus(url, name="procmond-ctl")
    await bus.start()
    try:
        if not await bus.wait_connected(timeout=min(timeout, 5.0)):
            echo(f"cannot reach Redis at {display_url(url)}", err=True)
            return EXIT_NO_REDIS
        client = RpcClient(bus)
        try:
            response = await client.call(collector_id, operation, payload, timeout=timeout)
        except NoResponder as exc:
            echo(escape(exc), err=True)
            return EXIT_NO_RESPONDER
        except CallTimeout as exc:
            echo(escape(exc), err=True)
            return EXIT_TIMEOUT
        except BusError as exc:
            echo(escape(f"Redis error: {exc}"), err=True)
            return EXIT_NO_REDIS
        finally:
            await client.close()
    finally:
        await bus.close()
    echo(json.dumps(response) if json_output else summarize(response))
    return _STATUS_EXIT.get(str(response.get("status")), EXIT_ERROR)
