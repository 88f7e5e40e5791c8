"""An RPC client for procmond's control topic: what ``procmond ctl`` and tests use.

Pykka's ``ask`` is the model: the reply topic is subscribed before the
request is published, every call has a deadline, and a call to nobody fails
at once (PUBLISH reports no subscriber) instead of waiting out its timeout.

Errors::

    ClientError
    ├── NoResponder     nobody listens on the collector's topic
    └── CallTimeout     no answer before the deadline
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from typing import Any

from procmond.bus.types import Bus
from procmond.schemas import OutgoingRequest, loads_object
from procmond.topics import collector_topic, response_topic


class ClientError(Exception):
    """Base of the client's errors."""


class NoResponder(ClientError):  # noqa: N818 - names the situation, as the exit code does
    """PUBLISH reached no subscriber: no collector with that id is listening."""


class CallTimeout(ClientError):  # noqa: N818 - names the situation, as the exit code does
    """No answer arrived before the deadline."""


def new_client_id(prefix: str = "ctl") -> str:
    """A fresh identifier, valid as a topic segment."""
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"


class RpcClient:
    """Calls collectors over a :class:`~procmond.bus.types.Bus`."""

    def __init__(self, bus: Bus, client_id: str | None = None) -> None:
        self._bus = bus
        self.client_id = client_id or new_client_id()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._started = False

    async def start(self) -> None:
        """Subscribe to the reply topic (confirmed by the server when connected)."""
        if not self._started:
            await self._bus.subscribe(response_topic(self.client_id), self._on_reply)
            self._started = True

    async def close(self) -> None:
        """Unsubscribe; pending calls fail with CallTimeout."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CallTimeout("client closed"))
        if self._started:
            await self._bus.unsubscribe(response_topic(self.client_id))
            self._started = False

    def _on_reply(self, channel: str, data: bytes) -> None:
        document = loads_object(data)
        if document is None:
            return
        future = self._pending.get(str(document.get("request_id")))
        if future is not None and not future.done():
            future.set_result(document)

    async def call(
        self,
        collector_id: str,
        operation: str,
        payload: dict[str, Any] | None = None,
        *,
        timeout: float = 10.0,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Send one request and return the response object.

        The request's ``deadline`` is now + ``timeout``. Raises
        :class:`NoResponder` or :class:`CallTimeout`.
        """
        await self.start()
        request_id = request_id or uuid.uuid4().hex
        topic = collector_topic(collector_id)
        request = OutgoingRequest.expiring(
            request_id=request_id,
            client_id=self.client_id,
            target=topic,
            operation=operation,
            payload=payload,
            timeout_s=timeout,
        )
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            # PUBLISH also counts pattern subscribers (a `procmond watch`), so
            # zero exact subscribers means no collector, whatever it returned.
            if (
                await self._bus.publish(topic, request.to_bytes()) == 0
                or await self._bus.channel_subscribers(topic) == 0
            ):
                raise NoResponder(f"no collector listening on {topic}")
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError as exc:
                raise CallTimeout(
                    f"no answer from {collector_id!r} to {operation} within {timeout:g} s"
                ) from exc
        finally:
            self._pending.pop(request_id, None)
