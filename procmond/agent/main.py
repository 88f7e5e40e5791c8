"""``procmond agent``: the reference agent's parts, started in order and stopped in reverse.

The bus, the :class:`~procmond.agent.service.Agent` answering registrations
and watching heartbeats, its view (a live table on a terminal, JSON lines
otherwise) and, with ``--metrics-listen``, the fleet view for Prometheus
(:mod:`procmond.metrics.agent`, imported only when asked for).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable

from procmond.agent.service import Agent
from procmond.agent.tracker import AgentEvent, Tracker
from procmond.agent.view import JsonLines, LiveTable
from procmond.bus.redis import RedisBus
from procmond.protocol import ConnectionStatus

__all__ = ["run_agent"]


async def run_agent(
    url: str,
    *,
    json_output: bool,
    heartbeat_interval_ms: int | None,
    service_id: str = "agent",
    stop: asyncio.Event | None = None,
    metrics_listen: tuple[str, int] | None = None,
) -> int:
    """Run until ``stop`` is set (or SIGINT/SIGTERM); returns 0.

    ``metrics_listen`` serves the fleet's metrics there; OSError when it cannot be bound.
    """
    stop = stop or asyncio.Event()
    tracker = Tracker(assigned_interval_ms=heartbeat_interval_ms)
    view: JsonLines | LiveTable
    if json_output or not sys.stdout.isatty():
        view = JsonLines(sys.stdout)
    else:
        view = LiveTable(sys.stdout)
    bus = RedisBus(url, name=f"procmond-{service_id}")
    on_events: Callable[[list[AgentEvent]], None] = view.events
    endpoint = None
    if metrics_listen is not None:
        from procmond.metrics.agent import AgentEndpoint

        endpoint = AgentEndpoint(
            tracker, lambda: bus.status is ConnectionStatus.CONNECTED, metrics_listen
        )
        on_events = endpoint.watching(view.events)
        print(f"procmond agent: metrics at {endpoint.url}", file=sys.stderr, flush=True)
    agent = Agent(bus, tracker, on_events=on_events, service_id=service_id)
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests): the caller's stop event rules
    try:
        await agent.start()
        await bus.start()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(agent.run(stop), name="agent-timer")
            tasks.create_task(view.run(agent, stop), name="agent-view")
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        await agent.close()
        await bus.close()
        if endpoint is not None:
            await endpoint.stop()
        view.close()
    return 0
