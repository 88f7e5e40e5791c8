"""The performer: what a change of lifecycle state means, done.

The lifecycle table says, for every state, which activities run while in it
and which actions happen on entering and leaving it (:mod:`fsm.lifecycle`);
:func:`fsm.move` turns a change of state into that list. :class:`Performer`
is the one place that list becomes I/O, and it decides nothing: each
:class:`fsm.Action` and :class:`fsm.Activity` has exactly one way to be
performed here, whichever state asked for it. The actor calls
:meth:`Performer.perform` right after it fired a trigger (and once at
start-up for the initial state); the performer counts each state entered, its
effects performed, in :attr:`Performer.entered` (readiness for tests).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from fsm import Action, Activity, Move, State
from procmond.daemon.collection import Collection
from procmond.daemon.messages import DrainReport, Message
from procmond.daemon.publisher import Publisher
from procmond.daemon.readiness import Counter
from procmond.daemon.registration import Registrar
from procmond.schemas import HealthPayload

__all__ = ["ANSWERS_SETTLE_S", "FINAL_PUBLISH_S", "Performer", "Service", "Spawn"]

log = logging.getLogger("procmond.actor")

#: How long ``stop`` waits for the last announcements to go out, and ``listen``'s
#: end for the answers in flight.
FINAL_PUBLISH_S: Final = 3.0
#: How long ``send Deregister`` first waits for answers being published
#: (protocol section 6: GracefulShutdown is answered before Deregister).
ANSWERS_SETTLE_S: Final = 1.0

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


class Service(Protocol):
    """A part that listens on the bus while the lifecycle's ``listen`` activity runs."""

    async def start(self) -> None: ...
    async def settle(self, timeout: float) -> None: ...
    async def close(self, timeout: float = 2.0) -> None: ...


@dataclass
class Performer:
    """Performs moves of the lifecycle with the actor's parts and hooks."""

    registrar: Registrar
    publisher: Publisher
    collection: Collection
    #: Starts a task the actor's group owns.
    spawn: Spawn
    #: Sends the actor a message (the ticks of the activities).
    tell: Callable[[Message], bool]
    #: The health payload now (heartbeats are built from it).
    health: Callable[[], HealthPayload]
    #: The drain to run for ``start drain`` (it answers GracefulShutdown).
    drain: Callable[[], Coroutine[Any, Any, None]]
    #: The drain's report, once it ended (for Deregister).
    report: Callable[[], DrainReport | None]
    #: Answers every queued message SHUTTING_DOWN.
    fail_pending: Callable[[], None]
    #: Ends the actor's loop.
    close_mailbox: Callable[[], None]
    services: list[Service] = field(default_factory=list)
    #: Times each state was entered, its effects performed (readiness).
    entered: dict[State, Counter] = field(
        default_factory=lambda: {state: Counter() for state in State}
    )
    _running: dict[Activity, asyncio.Task[None]] = field(default_factory=dict)

    async def perform(self, change: Move) -> None:
        """Exit actions, activities stopped then started (declaration order), entry actions."""
        await self.leave(change)
        await self.enter(change)

    async def leave(self, change: Move) -> None:
        """The actions of the state left (run while the machine is still in it)."""
        for action in change.exit_actions:
            await self._act(action, change)

    async def enter(self, change: Move) -> None:
        """Activities stopped then started (declaration order), then the entry actions."""
        order = list(Activity)
        for activity in sorted(change.stop, key=order.index):
            await self._stop(activity)
        for activity in sorted(change.start, key=order.index):  # listen first
            await self._start(activity)
        for action in change.enter_actions:
            await self._act(action, change)
        self.entered[change.new].add()

    async def _act(self, action: Action, change: Move) -> None:
        registrar = self.registrar
        if action is Action.SCHEDULE_REGISTRATION:
            registrar.schedule()
        elif action is Action.SEND_REGISTER:
            registrar.send_register()
        elif action is Action.END_ATTEMPT:
            registrar.end_attempt()
        elif action is Action.ANNOUNCE:
            self.publisher.announce(change.new)
        elif action is Action.HEARTBEAT_NOW:
            self.publisher.heartbeat(self.health())
        elif action is Action.START_DRAIN:
            self.spawn(self.drain(), "procmond-drain")
        elif action is Action.SEND_DEREGISTER:
            for service in self.services:
                await service.settle(ANSWERS_SETTLE_S)
            # The `draining` announcement goes out before the Deregister (another connection).
            await self.publisher.flush(ANSWERS_SETTLE_S)
            report = self.report()
            if report is not None:
                await registrar.deregister(report)
        elif action is Action.STOP:
            if not await self.publisher.flush(FINAL_PUBLISH_S):
                log.warning("final announcements did not go out in time")
            self.close_mailbox()

    async def _start(self, activity: Activity) -> None:
        if activity is Activity.LISTEN:
            await self.registrar.listen()
            for service in self.services:
                await service.start()
        elif activity is Activity.COLLECT:
            await self.collection.start_collecting(self.spawn, self.tell)
        elif activity is Activity.HEARTBEAT:
            timer = self.publisher.heartbeat_timer(self.tell)
            self._running[activity] = self.spawn(timer, "procmond-heartbeat")

    async def _stop(self, activity: Activity) -> None:
        if activity is Activity.LISTEN:
            self.fail_pending()  # answered while the services can still publish
            for service in self.services:
                await service.close(timeout=FINAL_PUBLISH_S)
            await self.registrar.unlisten()
        elif activity is Activity.COLLECT:
            await self.collection.stop_collecting()
        else:
            task = self._running.pop(activity, None)
            if task is not None:
                task.cancel()
