"""Command-line interface (the only module that imports click)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from procmond import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="procmond")
def main() -> None:
    """procmond: process-monitor collector daemon."""


@main.command()
@click.option(
    "--redis-url",
    envvar="PROCMOND_REDIS_URL",
    help="redis://, rediss:// or unix:// URL "
    "(with user:password for ACL). Default: start an embedded Redis in the data directory.",
)
@click.option(
    "--collector-id",
    envvar="PROCMOND_COLLECTOR_ID",
    help="This collector's id, unique per Redis (default: procmond).",
)
@click.option(
    "--data-dir",
    envvar="PROCMOND_DATA_DIR",
    type=click.Path(file_okay=False),
    help="Write-ahead log and embedded Redis (default: /var/lib/procmond for root, "
    "else ~/.local/state/procmond).",
)
@click.option(
    "--config",
    "config_file",
    envvar="PROCMOND_CONFIG",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Optional TOML settings file.",
)
@click.option(
    "--interval",
    envvar="PROCMOND_INTERVAL",
    type=float,
    help="Collection interval in seconds, 1 to 3600 (default 30).",
)
@click.option(
    "--max-processes",
    envvar="PROCMOND_MAX_PROCESSES",
    type=int,
    help="Collect at most this many processes; 0 = no limit (default).",
)
@click.option(
    "--max-events-in-flight",
    envvar="PROCMOND_MAX_EVENTS_IN_FLIGHT",
    type=int,
    help="Events per pipelined XADD batch, 1 to 100000 (default 1000).",
)
@click.option(
    "--enhanced-metadata/--no-enhanced-metadata",
    envvar="PROCMOND_ENHANCED_METADATA",
    default=None,
    help="Collect cpu_percent and memory_rss (default on).",
)
@click.option(
    "--hash-executables/--no-hash-executables",
    envvar="PROCMOND_HASH_EXECUTABLES",
    default=None,
    help="Compute sha256 of each new executable (default off).",
)
@click.option(
    "--heartbeat-interval-ms",
    envvar="PROCMOND_HEARTBEAT_INTERVAL_MS",
    type=int,
    help="Heartbeat interval proposed to the agent (default 30000; the agent's wins).",
)
@click.option(
    "--registration-attempts",
    envvar="PROCMOND_REGISTRATION_ATTEMPTS",
    type=int,
    help="Give up (exit 4) after this many failed attempts; 0 = never (default).",
)
@click.option(
    "--shutdown-timeout-ms",
    envvar="PROCMOND_SHUTDOWN_TIMEOUT_MS",
    type=int,
    help="Drain time allowed on SIGTERM/SIGINT (default 30000).",
)
@click.option(
    "--log-level",
    envvar="PROCMOND_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--log-format",
    envvar="PROCMOND_LOG_FORMAT",
    type=click.Choice(["text", "json"], case_sensitive=False),
)
def run(
    redis_url: str | None,
    collector_id: str | None,
    data_dir: str | None,
    config_file: Path | None,
    interval: float | None,
    max_processes: int | None,
    max_events_in_flight: int | None,
    enhanced_metadata: bool | None,
    hash_executables: bool | None,
    heartbeat_interval_ms: int | None,
    registration_attempts: int | None,
    shutdown_timeout_ms: int | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run the collector daemon.

    \b
    Exit codes:
      0    drained and deregistered (GracefulShutdown, SIGTERM or SIGINT)
      1    unexpected internal error
      2    invalid setting or command line
      3    cannot start (no Redis server binary, embedded Redis failed,
           or the write-ahead log is locked or unreadable)
      4    gave up registering after --registration-attempts failures
      130  second SIGINT: exited at once; unsent events stay in the log
    """
    from procmond.config import build_settings, load_toml
    from procmond.daemon.run import run as run_daemon
    from procmond.errors import StartupError
    from procmond.logs import setup_logging

    try:
        file_values = load_toml(config_file) if config_file is not None else None
        settings = build_settings(
            {
                "redis_url": redis_url,
                "collector_id": collector_id,
                "data_dir": data_dir,
                "log_level": log_level,
                "log_format": log_format,
                "heartbeat_interval_ms": heartbeat_interval_ms,
                "registration_attempts": registration_attempts,
                "shutdown_timeout_ms": shutdown_timeout_ms,
            },
            {
                "collection_interval_secs": interval,
                "max_processes": max_processes,
                "max_events_in_flight": max_events_in_flight,
                "collect_enhanced_metadata": enhanced_metadata,
                "compute_executable_hashes": hash_executables,
            },
            file_values,
        )
    except StartupError as exc:
        click.echo(f"procmond: {exc}", err=True)
        sys.exit(exc.exit_code)
    setup_logging(settings.log_level, settings.log_format)
    sys.exit(run_daemon(settings))


def _redis_url(redis_url: str | None, data_dir: str | None) -> str:
    """The URL given, or the embedded one of a local ``procmond run``; else exit 6."""
    from procmond.ctl import EXIT_NO_REDIS
    from procmond.discovery import NO_REDIS_MESSAGE, discover_redis_url

    if redis_url:
        return redis_url
    found = discover_redis_url(Path(data_dir) if data_dir else None)
    if found is None:
        click.echo(f"procmond: {NO_REDIS_MESSAGE}", err=True)
        sys.exit(EXIT_NO_REDIS)
    return found


_redis_options = [
    click.option(
        "--redis-url",
        envvar="PROCMOND_REDIS_URL",
        help="Redis URL (default: the embedded Redis of a local `procmond run`).",
    ),
    click.option(
        "--data-dir",
        envvar="PROCMOND_DATA_DIR",
        type=click.Path(file_okay=False),
        help="Data directory of the local `procmond run` (to find its embedded Redis).",
    ),
]


def _with_redis_options(func: Any) -> Any:
    for option in reversed(_redis_options):
        func = option(func)
    return func


@main.group(
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
        type=click.FloatRange(0.1, 600),
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
        help="The collector's id.",
    )(func)
    return _with_redis_options(func)


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

    url = _redis_url(redis_url, data_dir)
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
    wait = max(timeout, graceful_timeout_ms / 1000 + 5)
    _ctl_run(redis_url, data_dir, collector_id, "GracefulShutdown", payload, wait, json_output)


@main.command("demo")
@click.option(
    "--data-dir",
    envvar="PROCMOND_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data directory (default: procmond run's default, so `procmond ctl` finds it).",
)
@click.option(
    "--interval",
    type=click.FloatRange(1, 3600),
    default=5.0,
    show_default=True,
    help="Collection interval in seconds.",
)
@click.option(
    "--heartbeat-interval-ms",
    type=click.IntRange(100, 86_400_000),
    default=5000,
    show_default=True,
    help="Heartbeat interval the agent assigns.",
)
def demo_command(data_dir: Path | None, interval: float, heartbeat_interval_ms: int) -> None:
    """Run procmond on an embedded Redis with the reference agent, narrated.

    Shows registration, ready, heartbeats, RPCs and process events as they
    happen. Use `procmond ctl ...` from a second terminal; Ctrl-C drains.
    """
    from procmond.config import default_data_dir
    from procmond.demo import run_demo

    sys.exit(
        run_demo(
            data_dir or default_data_dir(), interval=interval, heartbeat_ms=heartbeat_interval_ms
        )
    )


@main.command("watch")
@click.argument("pattern", default="control.*")
@click.option("--json", "json_output", is_flag=True, help="One JSON object per line.")
@click.option("--no-events", is_flag=True, help="Control topics only; do not tail the streams.")
@_with_redis_options
def watch_command(
    pattern: str, json_output: bool, no_events: bool, redis_url: str | None, data_dir: str | None
) -> None:
    """Tail control topics matching PATTERN (Redis glob) and the event streams.

    PATTERN defaults to control.* (every control topic); for example
    'control.health.*' or 'control.*.web-01'. Ctrl-C stops.
    """
    import asyncio
    import signal

    from procmond.bus.redis import RedisBus
    from procmond.discovery import display_url
    from procmond.watch import watch

    url = _redis_url(redis_url, data_dir)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        bus = RedisBus(url, name="procmond-watch")
        await bus.start()
        if not await bus.wait_connected(timeout=5.0):
            click.echo(f"procmond: cannot reach Redis at {display_url(url)}", err=True)
            sys.exit(6)
        try:
            await watch(
                bus,
                pattern,
                events=not no_events,
                json_output=json_output,
                emit=lambda line: click.echo(line),
                stop=stop,
            )
        finally:
            await bus.close()

    asyncio.run(main())


@main.command("agent")
@click.option(
    "--redis-url",
    envvar="PROCMOND_REDIS_URL",
    help="Redis URL (default: the embedded Redis of a local `procmond run`).",
)
@click.option(
    "--data-dir",
    envvar="PROCMOND_DATA_DIR",
    type=click.Path(file_okay=False),
    help="Data directory of the local `procmond run` (to find its embedded Redis).",
)
@click.option("--json", "json_output", is_flag=True, help="JSON lines (the default off a TTY).")
@click.option(
    "--heartbeat-interval-ms",
    type=click.IntRange(100, 86_400_000),
    help="Assign this heartbeat interval to every collector (default: keep theirs).",
)
@click.option(
    "--service-id",
    default="agent",
    show_default=True,
    help="The service_id of this agent's answers.",
)
def agent_command(
    redis_url: str | None,
    data_dir: str | None,
    json_output: bool,
    heartbeat_interval_ms: int | None,
    service_id: str,
) -> None:
    """Run the reference agent: answer registrations, watch heartbeats.

    \b
    On a terminal: a live table (id, state, health, last beat age, seq,
    lost, events, buffer %). Off a terminal or with --json: one JSON object
    per notable change (registered, rejected, discovered, state, late,
    failed, recovered, deregistered, lost_heartbeats, bus_suspect,
    bus_recovered). Exit 0 on SIGINT/SIGTERM, 2 when no Redis is found.
    """
    import asyncio

    from procmond.agent.service import run_agent
    from procmond.discovery import NO_REDIS_MESSAGE, discover_redis_url

    url = redis_url or discover_redis_url(Path(data_dir) if data_dir else None)
    if url is None:
        click.echo(f"procmond: {NO_REDIS_MESSAGE}", err=True)
        sys.exit(2)
    sys.exit(
        asyncio.run(
            run_agent(
                url,
                json_output=json_output,
                heartbeat_interval_ms=heartbeat_interval_ms,
                service_id=service_id,
            )
        )
    )


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("diagrams"),
    show_default=True,
    help="Directory the diagrams are written to.",
)
@click.option("--check", is_flag=True, help="Exit 1 when the files differ from a fresh render.")
def diagram(out_dir: Path, check: bool) -> None:
    """Render the lifecycle state machine (Mermaid, SVG, acceptance table)."""
    from procmond.diagram import render_diagrams

    sys.exit(render_diagrams(out_dir, check=check))


if __name__ == "__main__":  # pragma: no cover
    main()
