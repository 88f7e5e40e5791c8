"""``procmond run``: start the parts in dependency order, stop them in reverse.

Start-up (each step only after the one before it succeeded):

1. data directory (0700); embedded Redis when no URL is given;
2. write-ahead log: opened, locked, pending events replayed into the buffer;
3. bus: connecting in the background (Redis may still be down: we collect
   and log anyway, and catch up when it comes);
4. the metrics endpoint when ``metrics_listen`` is set (a thread of its own
   serving ``/metrics``: :mod:`procmond.metrics`);
5. the event flusher, then the actor: it enters the lifecycle's initial
   state, whose row starts listening (the RPC service subscribes
   ``control.collector.{id}`` *before* the first ``Register``), collecting
   (the baseline cycle) and the first registration attempt.

Everything after that is the actor's, as the lifecycle table declares it.
Shutdown (GracefulShutdown, SIGTERM or SIGINT; protocol section 6) is a
message to the actor: it drains (cycle finished, events flushed, log
synced) and answers, sends Deregister, stops listening (queued requests
answered ``SHUTTING_DOWN``), announces ``deregistered`` and returns; then
the flusher, the bus, the metrics endpoint, the log and the embedded Redis stop, in reverse order
of their start. A second SIGINT exits at once: the log keeps whatever was
not sent.

Exit codes: see :data:`EXIT_CODES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import uuid
from contextlib import AsyncExitStack

from procmond import __version__
from procmond.bus.redis import RedisBus
from procmond.collect.collector import ProcessCollector
from procmond.collect.kernel_process import KernelProcess
from procmond.config import Settings, parse_listen
from procmond.daemon.actor import ProcmondMonitorCollector
from procmond.daemon.collection import collector_settings
from procmond.daemon.messages import DrainReport, GracefulShutdown
from procmond.daemon.operations import SERVED_OPERATIONS
from procmond.daemon.registration import Identity, RegistrationSettings
from procmond.daemon.rpc import RpcService
from procmond.daemon.sdnotify import SystemdNotifier
from procmond.discovery import display_url
from procmond.embedded import EmbeddedRedisError, RedisServer
from procmond.errors import (
    EXIT_CANNOT_START,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REGISTRATION_FAILED,
    StartupError,
)
from procmond.store.pipeline import EventPipeline
from procmond.store.wal import WalError, WalRecord, WriteAheadLog
from procmond.text_safety import escape

log = logging.getLogger("procmond")


def _say(message: str) -> None:
    """A line for the operator on stderr, whatever the log format (foreign text escaped)."""
    # stderr may be gone (a closed pipe): a signal must still reach the actor.
    with contextlib.suppress(OSError, ValueError):
        print(f"procmond: {escape(message)}", file=sys.stderr, flush=True)


class Daemon:
    """One run of procmond."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.boot_id = uuid.uuid4().hex
        self.exit_code = EXIT_OK
        self._interrupts = 0
        self._actor: ProcmondMonitorCollector | None = None

    async def run(self) -> int:
        """Run until drained; returns the exit code."""
        settings = self.settings
        try:
            settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(
                f"cannot create data directory {settings.data_dir}: {exc.strerror}",
                EXIT_CANNOT_START,
            ) from exc
        async with AsyncExitStack() as stack:
            url = settings.redis_url or await self._embedded_redis(stack)
            wal, pending = self._open_wal()
            bus = RedisBus(url, name=f"procmond-{settings.collector_id}")
            pipeline = EventPipeline(
                wal,
                bus,
                collector_id=settings.collector_id,
                boot_id=self.boot_id,
                batch_size=settings.collector.max_events_in_flight,
                capacity=settings.buffer_capacity,
                stream_maxlen=settings.stream_maxlen or None,
            )
            stack.push_async_callback(pipeline.close)
            pipeline.restore(pending)
            if pending:
                _say(f"replaying {len(pending)} events left in the write-ahead log")
            identity = Identity(
                settings.collector_id,
                self.boot_id,
                socket.gethostname(),
                os.getpid(),
                __version__,
            )
            actor = ProcmondMonitorCollector(
                identity,
                settings.collector,
                ProcessCollector(collector_settings(settings.collector)),
                pipeline,
                bus,
                kernel=KernelProcess,
                registration=RegistrationSettings(
                    heartbeat_interval_ms=settings.heartbeat_interval_ms,
                    max_attempts=settings.registration_attempts or None,
                ),
                on_give_up=self._give_up,
            )
            self._actor = actor
            rpc = RpcService(actor, bus)
            actor.serve(rpc)
            if settings.metrics_listen is not None:
                self._serve_metrics(stack, settings.metrics_listen, actor, pipeline, bus, rpc)
            notifier = SystemdNotifier.from_environment()
            if notifier is not None:
                actor.add_state_listener(notifier.on_state_change)
                notifier.send("STATUS=starting", f"MAINPID={os.getpid()}")
                stack.callback(notifier.close)
            _say(
                f"collector {settings.collector_id!r} (boot {self.boot_id}, pid {os.getpid()}) "
                f"using Redis at {display_url(url)}; data in {settings.data_dir}"
            )
            await bus.start()
            stack.push_async_callback(bus.close)
            self._install_signals()
            report = await self._serve(actor, pipeline, notifier)
        self._farewell(report)
        return self.exit_code

    async def _embedded_redis(self, stack: AsyncExitStack) -> str:
        server = RedisServer(self.settings.data_dir / "redis", persistent=True)
        try:
            url = await asyncio.to_thread(server.start)
        except EmbeddedRedisError as exc:
            raise StartupError(str(exc), EXIT_CANNOT_START) from exc
        stack.callback(server.stop)
        _say(f"no --redis-url given: started embedded Redis (pid {server.pid}) at {url}")
        return url

    def _serve_metrics(
        self,
        stack: AsyncExitStack,
        listen: str,
        actor: ProcmondMonitorCollector,
        pipeline: EventPipeline,
        bus: RedisBus,
        rpc: RpcService,
    ) -> None:
        """Start the ``/metrics`` endpoint; it stops (off the loop) after the bus closed."""
        # Imported only when asked for: without metrics, prometheus_client is never loaded.
        from procmond.metrics.daemon import DaemonMetrics
        from procmond.metrics.endpoint import MetricsEndpoint

        host, port = parse_listen(listen)
        metrics = DaemonMetrics(actor, pipeline, bus, SERVED_OPERATIONS)
        try:
            endpoint = MetricsEndpoint(host, port, [metrics])
        except OSError as exc:
            raise StartupError(
                f"cannot serve metrics on {listen}: {exc.strerror or exc}", EXIT_CANNOT_START
            ) from exc
        stack.push_async_callback(asyncio.to_thread, endpoint.stop)
        actor.collection.on_cycle = metrics.observe_cycle
        rpc.on_answer = metrics.rpc.answered
        _say(f"Prometheus metrics on {endpoint.url}")

    def _open_wal(self) -> tuple[WriteAheadLog, list[WalRecord]]:
        directory = self.settings.data_dir / "wal" / self.settings.collector_id
        try:
            directory.parent.mkdir(mode=0o700, exist_ok=True)
            wal = WriteAheadLog(directory, max_total_bytes=self.settings.wal_max_bytes)
            records = wal.open()
        except WalError as exc:
            raise StartupError(f"write-ahead log {directory}: {exc}", EXIT_CANNOT_START) from exc
        except OSError as exc:
            raise StartupError(
                f"write-ahead log {directory}: {exc.strerror or exc}", EXIT_CANNOT_START
            ) from exc
        return wal, records

    async def _serve(
        self,
        actor: ProcmondMonitorCollector,
        pipeline: EventPipeline,
        notifier: SystemdNotifier | None,
    ) -> DrainReport | None:
        """Run the flusher (and watchdog) while the actor runs; stop them once it returned."""
        async with asyncio.TaskGroup() as tasks:
            helpers = [tasks.create_task(pipeline.run(), name="procmond-flusher")]
            if notifier is not None:
                helpers.append(tasks.create_task(notifier.watchdog(), name="procmond-watchdog"))
            try:
                return await actor.run()
            finally:
                for helper in reversed(helpers):
                    helper.cancel()

    def _farewell(self, report: DrainReport | None) -> None:
        if report is None:
            _say("exiting: the actor stopped before a drain")
            return
        lost = f"; {report.unlogged} events lost (the log refused them)" if report.unlogged else ""
        _say(
            f"{'exited cleanly' if self.exit_code == EXIT_OK and not lost else 'exiting'}: "
            f"{report.result.events_flushed} events flushed, "
            f"{report.result.wal_pending} left in the log{lost}"
        )

    def _give_up(self, why: str) -> None:
        _say(f"{why}: shutting down")
        self.exit_code = EXIT_REGISTRATION_FAILED
        assert self._actor is not None
        timeout_s = self.settings.shutdown_timeout_ms / 1000
        self._actor.tell(
            GracefulShutdown(reason="registration failed", timeout_s=timeout_s), priority=True
        )

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: signal.Signals) -> None:
        """Only enqueue a message; the actor does the work (STYLE: celery bootsteps)."""
        self._interrupts += 1
        if signum == signal.SIGINT and self._interrupts > 1:
            _say("second interrupt: exiting now; unsent events stay in the write-ahead log")
            os._exit(EXIT_INTERRUPTED)
        name = signal.Signals(signum).name
        _say(f"{name} received: draining (press Ctrl-C again to exit at once)")
        assert self._actor is not None
        timeout_s = self.settings.shutdown_timeout_ms / 1000
        self._actor.tell(
            GracefulShutdown(reason=f"{name} received", timeout_s=timeout_s), priority=True
        )


def run(settings: Settings) -> int:
    """Run the daemon to completion; returns the process exit code."""
    try:
        return asyncio.run(Daemon(settings).run())
    except StartupError as exc:
        _say(str(exc))
        return exc.exit_code
