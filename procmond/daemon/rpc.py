"""RPC service: requests on ``control.collector.{id}``, answers on the caller's topic.

For each message (protocol sections 3 and 4):

1. over 1 MiB: answered ``INVALID_REQUEST`` if a ``client_id`` can be found
   in it, else dropped;
2. not a JSON object, or no usable ``client_id``: dropped, counted in
   ``rpc_malformed_total``, warned about (rate-limited);
3. envelope schema (with the limits of protocol section 10: ids and
   ``operation`` at most 128 characters, a deadline at most 300 s after the
   timestamp; the answer names what was wrong and echoes no long value);
4. a repeated ``(client_id, request_id)`` gets the first answer again,
   without executing anything, until the request's deadline
   (:mod:`procmond.daemon.answers`, bounded in bytes and count);
5. served operation, deadline on receipt, payload schema; UpdateConfig and
   GracefulShutdown are logged at INFO with the caller's ``client_id``;
6. handed to the actor's mailbox (which may refuse at once: ``INVALID_STATE``,
   ``SHUTTING_DOWN``, ``BUSY``, the latter also for a caller past its fair
   share), then the answer is awaited at most until the
   deadline, and 30 s for anything but GracefulShutdown (``TIMEOUT``).

This is the one place that turns wire requests into actor messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from procmond.bus.redis import Bus, BusError
from procmond.daemon.actor import ProcmondMonitorCollector
from procmond.daemon.answers import AnswerCache
from procmond.daemon.messages import GracefulShutdown, HealthCheck, Outcome, Request, UpdateConfig
from procmond.daemon.operations import SERVED_OPERATIONS, PayloadError, spec_for
from procmond.errors import Refused
from procmond.logs import RateLimitedLog
from procmond.protocol import IDENTIFIER, MAX_MESSAGE_BYTES, ErrorCode
from procmond.schemas import (
    RequestError,
    RpcErrorBody,
    RpcRequest,
    RpcResponse,
    loads_object,
    parse_request,
)
from procmond.text_safety import escape
from procmond.topics import collector_topic, response_topic

log = logging.getLogger("procmond.rpc")

#: At most one malformed-message warning per this many seconds.
MALFORMED_WARNING_INTERVAL_S: Final = 10.0
#: Answers being published at once. Every PUBLISH in flight holds one of the
#: bus's 16 command connections (bus.COMMAND_CONNECTIONS); keeping answers to
#: half of them leaves room for heartbeats and the XADD flusher in a burst.
MAX_CONCURRENT_ANSWERS: Final = 8

_SALVAGE_CLIENT = re.compile(rb'"client_id"\s*:\s*"([a-z0-9][a-z0-9_-]{0,62})"')
_SALVAGE_REQUEST = re.compile(rb'"request_id"\s*:\s*"([^"\\]{1,128})"')


class RpcService:
    """Subscribes to the collector's topic and answers every answerable request."""

    def __init__(self, actor: ProcmondMonitorCollector, bus: Bus) -> None:
        self._actor = actor
        self._bus = bus
        self._collector_id = actor.identity.collector_id
        #: Answers of earlier requests, for repeats (bounded; see procmond.daemon.answers).
        self.answers = AnswerCache()
        self._inflight: set[asyncio.Task[None]] = set()
        self._malformed_log = RateLimitedLog(log, MALFORMED_WARNING_INTERVAL_S)
        self._publishing = asyncio.Semaphore(MAX_CONCURRENT_ANSWERS)
        self.requests_total = 0
        self.responses_total = 0
        #: Called on the event loop with (operation, response status, seconds from
        #: receipt) for every answer made (the metrics' hook; must not block).
        self.on_answer: Callable[[str, str, float], None] | None = None

    async def start(self) -> None:
        """Subscribe; returns once the server confirmed (or at once while it is down)."""
        await self._bus.subscribe(collector_topic(self._collector_id), self._on_message)

    async def settle(self, timeout: float) -> None:
        """Wait (bounded) until the answers being published now have gone out."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)

    async def close(self, timeout: float = 2.0) -> None:
        """Let answers in flight go out (bounded), then stop listening."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)
        for task in list(self._inflight):
            task.cancel()
        with contextlib.suppress(BusError):
            await self._bus.unsubscribe(collector_topic(self._collector_id))

    # -- intake -------------------------------------------------------------

    def _on_message(self, channel: str, data: bytes) -> None:
        received = time.monotonic()
        self.requests_total += 1
        if len(data) > MAX_MESSAGE_BYTES:
            self._oversized(data, received)
            return
        document = loads_object(data)
        client_id = document.get("client_id") if document is not None else None
        if (
            document is None
            or not isinstance(client_id, str)
            or not IDENTIFIER.fullmatch(client_id)
        ):
            self._malformed(
                "not a JSON object with a valid client_id"
                if document is None
                else "no usable client_id"
            )
            return
        try:
            request = parse_request(document)
        except RequestError as exc:
            context = {"errors": exc.errors} if exc.errors else None
            error = Refused(ErrorCode.INVALID_REQUEST, str(exc), context)
            self._reply_error(
                client_id, exc.request_id, exc.request_id, exc.operation, error, received
            )
            return
        key = (client_id, request.request_id)
        earlier = self.answers.get(key, received)
        if earlier is not None:
            self._spawn(self._repeat(client_id, earlier))
            return
        # Remembered until the caller's deadline (on our clock): a repeat after
        # it is DEADLINE_EXCEEDED anyway (protocol section 10).
        expires = received + (request.deadline - datetime.now(UTC)).total_seconds()
        answer = self.answers.reserve(key, expires, received)
        self._spawn(self._serve(request, received, answer))

    def _oversized(self, data: bytes, received: float) -> None:
        client = _SALVAGE_CLIENT.search(data)
        if client is None:
            self._malformed(f"{len(data)} bytes, over the 1 MiB limit, no client_id")
            return
        request = _SALVAGE_REQUEST.search(data)
        request_id = request.group(1).decode(errors="replace") if request else ""
        error = Refused.invalid_request(
            f"message of {len(data)} bytes is over the {MAX_MESSAGE_BYTES}-byte limit"
        )
        self._reply_error(client.group(1).decode(), request_id, request_id, "", error, received)

    def _malformed(self, why: str) -> None:
        self._actor.rpc_malformed_total += 1
        self._malformed_log(
            logging.WARNING,
            "malformed",
            "dropped an unanswerable message on %s: %s (%d dropped so far)",
            collector_topic(self._collector_id),
            why,
            self._actor.rpc_malformed_total,
        )

    # -- execution ----------------------------------------------------------

    async def _serve(
        self, request: RpcRequest, received: float, answer: asyncio.Future[bytes]
    ) -> None:
        try:
            outcome = await self._execute(request, received)
        except Exception as exc:  # never let one request take the service down
            log.exception("internal error serving %s", request.operation)
            outcome = Outcome(error=Refused.internal(f"{type(exc).__name__}: {exc}"))
        data = self._response(
            request.request_id,
            request.correlation_id or request.request_id,
            request.operation,
            outcome,
            received,
        )
        self.answers.fill((request.client_id, request.request_id), answer, data)
        await self._publish(request.client_id, data)

    async def _execute(self, request: RpcRequest, received: float) -> Outcome:
        operation = request.operation
        spec = spec_for(operation)
        if spec is None:
            return Outcome(error=Refused.unsupported_operation(operation, SERVED_OPERATIONS))
        try:
            decoded = spec.decode(request.payload)
        except PayloadError as exc:
            return Outcome(error=Refused.invalid_request(str(exc)))
        assert isinstance(decoded, HealthCheck | UpdateConfig | GracefulShutdown)
        # Whose fair share of the mailbox it counts in (protocol section 10).
        message = dataclasses.replace(decoded, caller=request.client_id)
        details = _logged_details(message)
        if details is not None:
            # Who asked (issue 11): every change and every shutdown names its caller.
            log.info(
                "%s from client %s (request %s): %s",
                operation,
                escape(request.client_id),
                escape(request.request_id),
                escape(details),
            )
        # The caller's deadline on our clock, and the execution limit counted from
        # receipt: whichever comes first. The mailbox owns every check of it.
        now = time.monotonic()
        callers = now + (request.deadline - datetime.now(UTC)).total_seconds()
        limit = spec.limit_s(message)
        ours = received + limit
        deadline_name = "the deadline" if callers <= ours else f"{limit:.0f} s"
        return await self._actor.ask(message, min(callers, ours), deadline_name=deadline_name)

    async def _repeat(self, client_id: str, earlier: asyncio.Future[bytes]) -> None:
        await self._publish(client_id, await asyncio.shield(earlier))

    def _reply_error(
        self,
        client_id: str,
        request_id: str,
        correlation_id: str,
        operation: str,
        error: Refused,
        received: float,
    ) -> None:
        data = self._response(request_id, correlation_id, operation, Outcome(error=error), received)
        self._spawn(self._publish(client_id, data))

    def _response(
        self,
        request_id: str,
        correlation_id: str,
        operation: str,
        outcome: Outcome,
        received: float,
    ) -> bytes:
        error = outcome.error
        total_ms = (time.monotonic() - received) * 1000
        status = "Success" if error is None else error.status
        if self.on_answer is not None:
            self.on_answer(operation, status, total_ms / 1000)
        response = RpcResponse(
            request_id=request_id,
            correlation_id=correlation_id,
            operation=operation,
            service_id=self._collector_id,
            status=status,  # type: ignore[arg-type]
            payload=outcome.payload,
            error=None if error is None else RpcErrorBody.model_validate(error.body()),
            state=self._actor.state.value,
            timestamp=datetime.now(UTC),
            queue_time_ms=round(outcome.queue_ms, 3),
            execution_time_ms=round(outcome.execution_ms, 3),
            total_time_ms=round(max(total_ms, outcome.queue_ms + outcome.execution_ms), 3),
        )
        return response.to_bytes()

    async def _publish(self, client_id: str, data: bytes) -> None:
        try:
            async with self._publishing:
                await self._bus.publish(response_topic(client_id), data)
            self.responses_total += 1
        except BusError as exc:
            log.warning("could not answer %s: %s", client_id, exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)


def _logged_details(message: Request) -> str | None:
    """What an UpdateConfig or GracefulShutdown asks for, for its log line; None for others."""
    if isinstance(message, UpdateConfig):
        changes = ", ".join(f"{key}={value!r}" for key, value in message.changes.items())
        return f"{changes}{' (validate only)' if message.validate_only else ''}"
    if isinstance(message, GracefulShutdown):
        return f"reason {message.reason!r}, timeout {message.timeout_s:g} s"
    return None
