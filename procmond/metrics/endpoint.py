"""The ``/metrics`` HTTP endpoint: ``prometheus_client``'s server on a thread of its own.

One registry per endpoint (not the library's global one), holding the
process collector (CPU seconds, resident memory, open files, start time of
this process) and the caller's collectors. The server thread answers each
scrape by calling their ``collect()``; nothing of a scrape runs on the event
loop. :meth:`MetricsEndpoint.stop` blocks until the server's loop noticed
(up to its 0.5 s poll interval): call it off the event loop
(``asyncio.to_thread``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.registry import Collector

__all__ = ["MetricsEndpoint"]


class MetricsEndpoint:
    """A started ``/metrics`` server; :attr:`url` says where it listens."""

    def __init__(self, host: str, port: int, collectors: Iterable[Collector]) -> None:
        """Bind and start serving; OSError when the address cannot be bound."""
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        for collector in collectors:
            self.registry.register(collector)
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server: WSGIServer | None = server
        self._thread: threading.Thread = thread
        self.host = host
        self.port = int(server.server_port)

    @property
    def url(self) -> str:
        """``http://HOST:PORT/metrics`` with the port actually bound."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket (blocking, bounded by the poll interval)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._thread.join(timeout=5.0)
