"""The operator tools' commands: ``procmond demo``, ``watch``, ``agent`` and ``diagram``.

Each is a thin command line over its module (:mod:`procmond.demo`,
:mod:`procmond.watch`, :mod:`procmond.agent.service`, :mod:`procmond.diagram`),
imported only when the command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from procmond.cli.options import resolve_redis_url, with_redis_options
from procmond.protocol import MAX_HEARTBEAT_INTERVAL_MS, MIN_HEARTBEAT_INTERVAL_MS

__all__ = ["agent_command", "demo_command", "diagram", "watch_command"]


@click.command("demo")
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
    type=click.IntRange(MIN_HEARTBEAT_INTERVAL_MS, MAX_HEARTBEAT_INTERVAL_MS),
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


@click.command("watch")
@click.argument("pattern", default="control.*")
@click.option("--json", "json_output", is_flag=True, help="One JSON object per line.")
@click.option("--no-events", is_flag=True, help="Control topics only; do not tail the streams.")
@with_redis_options
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

    url = resolve_redis_url(redis_url, data_dir)

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


@click.command("agent")
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
    type=click.IntRange(MIN_HEARTBEAT_INTERVAL_MS, MAX_HEARTBEAT_INTERVAL_MS),
    help="Assign this heartbeat interval to every collector (default: keep theirs).",
)
@click.option(
    "--service-id",
    default="agent",
    show_default=True,
    help="The service_id of this agent's answers.",
)
@click.option(
    "--metrics-listen",
    envvar="PROCMOND_AGENT_METRICS_LISTEN",
    metavar="HOST:PORT",
    help="Serve the fleet's Prometheus metrics at http://HOST:PORT/metrics (default: off; "
    "port 0 picks a free one).",
)
def agent_command(
    redis_url: str | None,
    data_dir: str | None,
    json_output: bool,
    heartbeat_interval_ms: int | None,
    service_id: str,
    metrics_listen: str | None,
) -> None:
    """Run the reference agent: answer registrations, watch heartbeats.

    \b
    On a terminal: a live table (id, state, health, last beat age, seq,
    lost, events, buffer %). Off a terminal or with --json: one JSON object
    per notable change (registered, rejected, discovered, state, late,
    failed, recovered, deregistered, lost_heartbeats, bus_suspect,
    bus_recovered). Exit 0 on SIGINT/SIGTERM, 2 when no Redis is found, 3 when
    --metrics-listen cannot be bound.
    """
    import asyncio

    from procmond.agent.main import run_agent
    from procmond.config import parse_listen
    from procmond.discovery import NO_REDIS_MESSAGE, discover_redis_url

    listen = None
    if metrics_listen:
        try:
            listen = parse_listen(metrics_listen)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--metrics-listen") from exc
    url = redis_url or discover_redis_url(Path(data_dir) if data_dir else None)
    if url is None:
        click.echo(f"procmond: {NO_REDIS_MESSAGE}", err=True)
        sys.exit(2)
    try:
        status = asyncio.run(
            run_agent(
                url,
                json_output=json_output,
                heartbeat_interval_ms=heartbeat_interval_ms,
                service_id=service_id,
                metrics_listen=listen,
            )
        )
    except OSError as exc:  # the metrics address could not be bound
        click.echo(f"procmond: cannot serve metrics at {metrics_listen}: {exc}", err=True)
        sys.exit(3)
    sys.exit(status)


@click.command()
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
