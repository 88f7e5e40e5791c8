"""``procmond ctl``: call a collector's RPCs (health, config, shutdown) from a shell.

The calls themselves and their exit codes are :mod:`procmond.ctl`; this module
is their command line.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from procmond.cli.options import resolve_redis_url, with_redis_options
from procmond.protocol import IDENTIFIER, MAX_DEADLINE_SPAN_S

__all__ = ["ctl", "ctl_config", "ctl_health", "ctl_shutdown"]


@click.group(
    epilog="""\b
Exit status:
  0  Success
  1  the collector answered Error (bad request, invalid state, validation failed)
  2  bad command line
  3  Timeout: answered Timeout, or no answer before --timeout
  4  Unavailable: BUSY or SHUTTING_DOWN
  5  no collector listening on its control topic
  6  Redis not reachable"""
)
def ctl() -> None:
    """Call a collector's RPCs: health, config, shutdown."""


def _ctl_common(func: Any) -> Any:
    func = click.option("--json", "json_output", is_flag=True, help="Print the raw response.")(func)
    func = click.option(
        "--timeout",
        # Protocol section 10: a deadline at most 300 s after the request's timestamp.
        type=click.FloatRange(0.1, MAX_DEADLINE_SPAN_S),
        default=10.0,
        show_default=True,
        help="Seconds to wait; also the request's deadline.",
    )(func)
    func = click.option(
        "--collector",
        "collector_id",
        envvar="PROCMOND_COLLECTOR_ID",
        default="procmond",
        show_default=True,
        callback=_identifier,
        help="The collector's id.",
    )(func)
    return with_redis_options(func)


def _identifier(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """An identifier of protocol section 1, matched whole (``web-01\\n`` is not one)."""
    if not IDENTIFIER.fullmatch(value):
        raise click.BadParameter(f"{value!r} does not match {IDENTIFIER.pattern}$")
    return value


def _ctl_run(
    redis_url: str | None,
    data_dir: str | None,
    collector_id: str,
    operation: str,
    payload: dict[str, Any] | None,
    timeout: float,
    json_output: bool,
) -> None:
    import asyncio

    from procmond.ctl import ctl_call

    url = resolve_redis_url(redis_url, data_dir)
    sys.exit(
        asyncio.run(
            ctl_call(
                url,
                collector_id,
                operation,
                payload,
                timeout=timeout,
                json_output=json_output,
                echo=click.echo,
            )
        )
    )


@ctl.command("health")
@_ctl_common
def ctl_health(
    redis_url: str | None,
    data_dir: str | None,
    collector_id: str,
    timeout: float,
    json_output: bool,
) -> None:
    """Ask a collector for its health (HealthCheck)."""
    _ctl_run(redis_url, data_dir, collector_id, "HealthCheck", None, timeout, json_output)


@ctl.command("config")
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--validate-only", is_flag=True, help="Check the values; change nothing.")
@_ctl_common
def ctl_config(
    assignments: tuple[str, ...],
    validate_only: bool,
    redis_url: str | None,
    data_dir: str | None,
    collector_id: str,
    timeout: float,
    json_output: bool,
) -> None:
    """Change a collector's configuration (UpdateConfig), applied between cycles.

    \b
    Keys: collection_interval_secs, max_events_in_flight,
    collect_enhanced_metadata, compute_executable_hashes, max_processes.
    VALUE is read as JSON when it parses (30, 2.5, true), else as text.
    """
    from procmond.ctl import UsageError, parse_assignments

    try:
        changes = parse_assignments(assignments)
    except UsageError as exc:
        raise click.BadParameter(str(exc), param_hint="KEY=VALUE") from exc
    payload = {"changes": changes, "validate_only": validate_only}
    _ctl_run(redis_url, data_dir, collector_id, "UpdateConfig", payload, timeout, json_output)


@ctl.command("shutdown")
@click.option("--reason", help="Why; recorded in the Deregister request.")
@click.option(
    "--graceful-timeout-ms",
    type=click.IntRange(1000, 300_000),
    default=30_000,
    show_default=True,
    help="How long the drain may take.",
)
@_ctl_common
def ctl_shutdown(
    reason: str | None,
    graceful_timeout_ms: int,
    redis_url: str | None,
    data_dir: str | None,
    collector_id: str,
    timeout: float,
    json_output: bool,
) -> None:
    """Drain and stop a collector (GracefulShutdown); waits for the drain."""
    payload = {"reason": reason, "graceful_timeout_ms": graceful_timeout_ms}
    wait = min(max(timeout, graceful_timeout_ms / 1000 + 5), MAX_DEADLINE_SPAN_S)
    _ctl_run(redis_url, data_dir, collector_id, "GracefulShutdown", payload, wait, json_output)
