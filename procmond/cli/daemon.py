"""``procmond run``: the daemon's command line, its options and exit codes.

Every option has a ``PROCMOND_*`` environment variable; what the options,
the environment and the TOML file mean together is :mod:`procmond.config`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["run"]


@click.command()
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
    "--kernel-events/--no-kernel-events",
    envvar="PROCMOND_KERNEL_EVENTS",
    default=None,
    help="Listen to the kernel's fork/exec/exit events (netlink process connector; "
    "run as root in the initial namespaces), with cycles as reconciler (default on). "
    "Off, or where the kernel refuses: cycles alone.",
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
    "--metrics-listen",
    envvar="PROCMOND_METRICS_LISTEN",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics on http://HOST:PORT/metrics (default: off). "
    "Port 0 picks a free port (printed at start).",
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
    kernel_events: bool | None,
    heartbeat_interval_ms: int | None,
    registration_attempts: int | None,
    shutdown_timeout_ms: int | None,
    metrics_listen: str | None,
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
                "metrics_listen": metrics_listen,
            },
            {
                "collection_interval_secs": interval,
                "max_processes": max_processes,
                "max_events_in_flight": max_events_in_flight,
                "collect_enhanced_metadata": enhanced_metadata,
                "compute_executable_hashes": hash_executables,
                "kernel_events": kernel_events,
            },
            file_values,
        )
    except StartupError as exc:
        click.echo(f"procmond: {exc}", err=True)
        sys.exit(exc.exit_code)
    setup_logging(settings.log_level, settings.log_format)
    sys.exit(run_daemon(settings))
