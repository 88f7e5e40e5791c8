"""``procmond demo``: the whole stack on one screen, for a newcomer.

It starts ``procmond run`` as a child on its embedded Redis (no URL given),
runs the reference agent beside it in this process, and narrates what
happens, one line per step: the daemon's own log, every control message
(registration, ``ready``, heartbeats, RPCs from ``procmond ctl`` in another
terminal) and the process events as they reach the streams (the baseline
summarised in one line). Where the kernel lets the daemon listen to its
process events (root, the initial namespaces, Linux) every program run shows
as an ``exec`` event; the demo says which capture mode runs and what it means
for what can be seen. Ctrl-C reaches the daemon too (same terminal
process group): it drains, deregisters and exits, and the demo exits with
its status after showing the last messages.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

from procmond.agent.service import Agent, AgentEvent, Tracker
from procmond.bus.redis import BusError, RedisBus
from procmond.errors import EXIT_CODES
from procmond.text_safety import escape
from procmond.topics import EVENT_STREAMS
from procmond.watch import describe_control, describe_event, in_seq_order

#: Events shown one by one per stream read; more are counted in one line.
_EVENTS_SHOWN: Final = 12
_URL_LINE: Final = re.compile(r"started embedded Redis \(pid \d+\) at (\S+)")
#: The daemon's one line saying how it captures processes (protocol section 9).
_CAPTURE_LINE: Final = re.compile(r"capture mode (kernel|cycle): ")
_WAIT_FOR_REDIS_S: Final = 30.0
_FINAL_MESSAGES_S: Final = 0.1

Emit = Callable[[str, str], None]


def _stamp() -> str:
    return datetime.now(UTC).astimezone().strftime("%H:%M:%S")


def terminal_emitter(stream: TextIO = sys.stdout) -> Emit:
    """Print ``HH:MM:SS source | text`` lines, ``text`` escaped (it may be foreign)."""

    def emit(source: str, text: str) -> None:
        print(f"{_stamp()} {source:>8} | {escape(text)}", file=stream, flush=True)

    return emit


def describe_agent_event(event: AgentEvent) -> str:
    """The agent's view of a change, in words."""
    data = " ".join(f"{key}={value}" for key, value in event.data.items())
    return f"{event.kind.value} {event.collector_id or ''} {data}".rstrip()


class Demo:
    """One demo run."""

    def __init__(self, data_dir: Path, *, interval: float, heartbeat_ms: int, emit: Emit) -> None:
        self.data_dir = data_dir
        self.interval = interval
        self.heartbeat_ms = heartbeat_ms
        self.emit = emit
        self._url: asyncio.Future[str] | None = None
        self._interrupted = 0
        self._done = asyncio.Event()

    async def run(self) -> int:
        """Run until the daemon exits; returns its exit status."""
        loop = asyncio.get_running_loop()
        self._url = loop.create_future()
        procmond = str(Path(sys.executable).parent / "procmond")
        self._intro(procmond)
        # The demo is about the embedded default: a URL from the environment
        # would point the daemon elsewhere and leave the narration blind.
        env = {k: v for k, v in os.environ.items() if k != "PROCMOND_REDIS_URL"}
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "procmond.cli", "run",
            "--data-dir", str(self.data_dir),
            "--interval", f"{self.interval:g}",
            "--log-level", "info",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        loop.add_signal_handler(signal.SIGINT, self._on_interrupt, child)
        loop.add_signal_handler(signal.SIGTERM, self._on_terminate, child)
        stop = self._done
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._relay_log(child))
            watcher = tasks.create_task(self._watch(stop))
            code = await child.wait()
            if not self._url.done():
                self._url.cancel()
            stop.set()
            await watcher
        meaning = EXIT_CODES.get(code, "see `procmond run --help`")
        self.emit("demo", f"procmond exited with status {code}: {meaning}")
        return code

    def _intro(self, procmond: str) -> None:
        say = self.emit
        say(
            "demo", "procmond demo: a collector on an embedded Redis, the reference agent beside it"
        )
        say(
            "demo",
            f"data directory {self.data_dir}; collection every {self.interval:g} s, "
            f"heartbeats every {self.heartbeat_ms / 1000:g} s (assigned by the agent)",
        )
        say(
            "demo",
            f"from another terminal: {procmond} ctl health  |  "
            f"{procmond} ctl config collection_interval_secs=10  |  {procmond} watch",
        )
        say(
            "demo",
            "run a program there too (say `/bin/true hello`): with kernel events its exec "
            "shows below as events.process.exec",
        )
        say("demo", "Ctrl-C: graceful drain (finish the cycle, flush events, deregister, exit); "
            "twice: exit at once")  # fmt: skip

    def _on_interrupt(self, child: asyncio.subprocess.Process) -> None:
        # The terminal sent SIGINT to the daemon as well; it drains by itself.
        self._interrupted += 1
        if self._interrupted == 1:
            self.emit("demo", "Ctrl-C: procmond is draining; press again to stop at once")
        else:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGINT)

    def _on_terminate(self, child: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.terminate()

    async def _relay_log(self, child: asyncio.subprocess.Process) -> None:
        assert child.stderr is not None
        assert self._url is not None
        async for raw in child.stderr:
            line = raw.decode(errors="replace").rstrip()
            found = _URL_LINE.search(line)
            if found and not self._url.done():
                self._url.set_result(found.group(1))
            if line.startswith(("procmond: exited", "procmond: exiting")):
                # Stop narrating before the daemon stops its embedded Redis
                # (a moment later: its last messages may still be in flight).
                asyncio.get_running_loop().call_later(_FINAL_MESSAGES_S, self._done.set)
            # Drop the log's own clock: the demo stamps every line.
            self.emit("procmond", re.sub(r"^\d\d:\d\d:\d\d ", "", line).removeprefix("procmond: "))
            capture = _CAPTURE_LINE.search(line)
            if capture:
                self.emit("demo", self._capture_meaning(capture.group(1)))

    def _capture_meaning(self, mode: str) -> str:
        """What the daemon's capture mode means for what the demo will show."""
        if mode == "kernel":
            return (
                "capture mode kernel: every fork, exec and exit as it happens, even of a "
                f"millisecond-long program; the cycle every {self.interval:g} s reconciles"
            )
        return (
            f"capture mode cycle: only processes alive at a cycle (every {self.interval:g} s) "
            "are seen, and no exec events; the line above says why (kernel events need "
            "root in the initial namespaces, on Linux)"
        )

    async def _watch(self, stop: asyncio.Event) -> None:
        assert self._url is not None
        try:
            async with asyncio.timeout(_WAIT_FOR_REDIS_S):
                url = await self._url
        except (TimeoutError, asyncio.CancelledError):
            return
        bus = RedisBus(url, name="procmond-demo")
        agent = Agent(
            bus,
            Tracker(assigned_interval_ms=self.heartbeat_ms),
            on_events=self._agent_events,
        )
        await agent.start()
        await bus.psubscribe(
            "control.*", lambda _p, channel, data: self.emit("bus", describe_control(channel, data))
        )
        await bus.start()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(agent.run(stop))
                tail = tasks.create_task(self._tail(bus))
                await stop.wait()
                tail.cancel()
        finally:
            await agent.close()
            await bus.close()

    def _agent_events(self, events: list[AgentEvent]) -> None:
        for event in events:
            self.emit("agent", describe_agent_event(event))

    async def _tail(self, bus: RedisBus) -> None:
        if not await bus.wait_connected(timeout=_WAIT_FOR_REDIS_S):
            return
        # From what the streams hold now: earlier runs' events are not news.
        last = {key: await bus.stream_tail_id(key) for key in EVENT_STREAMS}
        while True:
            try:
                batch = await bus.xread(last, block_ms=1000, count=5000)
            except BusError:
                await bus.wait_connected(timeout=1.0)
                continue
            baseline: collections.Counter[str] = collections.Counter()
            shown = 0
            for stream, entry_id, _fields in batch:
                last[stream] = entry_id
            for stream, entry_id, fields in in_seq_order(batch):
                if '"baseline":true' in fields.get("event", ""):
                    baseline[fields.get("collector_id", "?")] += 1
                elif shown < _EVENTS_SHOWN:
                    shown += 1
                    self.emit("events", describe_event(stream, entry_id, fields))
            hidden = len(batch) - shown - sum(baseline.values())
            if hidden:
                self.emit("events", f"... and {hidden} more events in this batch")
            for collector, count in baseline.items():
                self.emit(
                    "events",
                    f"{collector}: baseline of {count} running processes "
                    "(one `start` event each, marked baseline)",
                )


def run_demo(data_dir: Path, *, interval: float, heartbeat_ms: int) -> int:
    """Entry point for the CLI."""
    # The embedded Redis leaves with the daemon; its bus warnings would only
    # repeat what the narration already says.
    logging.getLogger("procmond.bus").setLevel(logging.ERROR)
    demo = Demo(data_dir, interval=interval, heartbeat_ms=heartbeat_ms, emit=terminal_emitter())
    return asyncio.run(demo.run())
