"""systemd ``Type=notify`` support, without libsystemd.

When ``NOTIFY_SOCKET`` is set, procmond sends on every state change the
lines the lifecycle table declares for the new state (``READY=1`` on
entering ``ready``, ``STOPPING=1`` on entering ``draining``) and its
``STATUS=`` text, and ``WATCHDOG=1`` at half of ``WATCHDOG_USEC`` (only
while the event loop is responsive, which is what the watchdog should prove).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

from fsm import State, Trigger, effects

log = logging.getLogger("procmond.sdnotify")


class SystemdNotifier:
    """Sends sd_notify datagrams to ``NOTIFY_SOCKET``."""

    def __init__(self, address: str, watchdog_usec: int | None = None) -> None:
        # A leading '@' names a socket in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> SystemdNotifier | None:
        """A notifier when run under systemd with ``NOTIFY_SOCKET``, else None."""
        address = environ.get("NOTIFY_SOCKET")
        if not address:
            return None
        watchdog: int | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec)
        return cls(address, watchdog)

    def send(self, *lines: str) -> bool:
        """Send one datagram; False (logged) when systemd is not listening."""
        try:
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            return False
        return True

    def on_state_change(self, old: State, new: State, trigger: Trigger) -> None:
        """Lifecycle listener: the lines the new state's row declares, then its STATUS=."""
        row = effects(new)
        self.send(*row.sd_notify, f"STATUS={row.status}")

    async def watchdog(self) -> None:
        """Ping the watchdog at half its interval, for as long as the loop runs."""
        if self.watchdog_usec is None:
            return
        interval = self.watchdog_usec / 2_000_000
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Close the socket."""
        self._socket.close()
