"""Supervise a child ``redis-server`` (or ``valkey-server``) process.

Theory of operation: :class:`RedisServer` starts the server in the foreground
(no daemonizing) as a direct child, listening by default on a unix socket only
(``--port 0``) inside a private 0700 directory, and waits for it to answer PING
before :meth:`RedisServer.start` returns. The child is started with
``prctl(PR_SET_PDEATHSIG, SIGTERM)`` so that it dies with us even when we are
SIGKILLed (the embedded-server wheels we measured all leave an orphan behind),
and in its own session so that a terminal's Ctrl-C reaches the daemon first and
the daemon decides when the server stops (it may still have events to flush).

Linux caveat: the death signal fires when the *thread* that forked the child
exits, so call :meth:`RedisServer.start` from a thread that lives as long as
the server (the main thread), not from a short-lived worker thread.

This module does no asyncio: starting and stopping are blocking calls that
take milliseconds; an async caller may run them in the main thread before its
loop starts or accept the short block.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

from procmond.children import death_signal_preexec

__all__ = [
    "SERVER_LIMITS",
    "EmbeddedRedisError",
    "RedisServer",
    "find_server_binary",
    "free_port",
]

INSTALL_HINT: Final = (
    "no redis-server found: install it with `apt-get install redis-server` "
    "(Debian/Ubuntu) or pass --redis-url"
)
SERVER_BINARIES: Final = ("redis-server", "valkey-server")
SOCKET_NAME: Final = "redis.sock"
URL_FILE: Final = "redis.url"
LOG_FILE: Final = "redis.log"
# sun_path is 108 bytes on Linux including the terminating NUL; a longer path
# fails inside redis-server with an unhelpful message, so we refuse it first.
MAX_SOCKET_PATH: Final = 107
#: Input limits of every server started here (docs/security.md, "Redis limits").
#: Redis has no per-publisher limit: a PUBLISH is copied into each subscriber's
#: output buffer, and it is the *subscriber* that Redis disconnects when that
#: buffer passes ``client-output-buffer-limit pubsub`` (a 40 MB PUBLISH dropped
#: procmond's and the agent's subscriber connections, issue 11). The defence is
#: to refuse such a message at the door: ``proto-max-bulk-len`` 2 MB (protocol
#: section 1 caps a message at 1 MiB, a JWS of it is a third larger plus its
#: header, 1.34 MiB) makes Redis answer a bigger argument with a protocol error
#: and close the *sender's* connection. ``client-query-buffer-limit`` 32 MB
#: (default 1 GB) closes a client that streams one huge multi-argument command,
#: before its ACL check would refuse it. The pubsub output buffer limit is
#: written out at Redis's default (32 MB hard, 8 MB for 60 s): 16 messages of
#: the largest allowed size, a backlog a live subscriber never reaches.
SERVER_LIMITS: Final = (
    "--proto-max-bulk-len",
    "2mb",
    "--client-query-buffer-limit",
    "32mb",
    "--client-output-buffer-limit",
    "pubsub 32mb 8mb 60",
)


class EmbeddedRedisError(Exception):
    """The embedded server could not be found, started or reached."""


def find_server_binary() -> str:
    """Return the path of ``redis-server`` or ``valkey-server`` found on PATH."""
    for name in SERVER_BINARIES:
        path = shutil.which(name)
        if path is not None:
            return path
    raise EmbeddedRedisError(INSTALL_HINT)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(address: str | tuple[str, int], timeout: float) -> bytes | None:
    """Send one inline PING; return the first reply line, or None if unreachable."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"PING\r\n")
            return sock.recv(256).split(b"\r\n", 1)[0]
    except OSError:
        return None


class RedisServer:
    """A ``redis-server`` child process owned by this process."""

    def __init__(
        self,
        directory: Path,
        *,
        persistent: bool = True,
        port: int | None = None,
        unix_socket: bool | None = None,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.directory = Path(directory).absolute()
        self.persistent = persistent
        self.port = port
        # Default: unix socket only; with a TCP port, no socket unless asked.
        self.unix_socket = (port is None) if unix_socket is None else unix_socket
        if port is None and not self.unix_socket:
            raise EmbeddedRedisError("RedisServer needs a port or a unix socket")
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self.socket_path = self.directory / SOCKET_NAME
        self.url_file = self.directory / URL_FILE
        self.log_file = self.directory / LOG_FILE
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients use: ``unix://`` when there is a socket, else ``redis://``."""
        if self.unix_socket:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The pid of the running child; EmbeddedRedisError when not started."""
        if self._proc is None:
            raise EmbeddedRedisError("redis-server is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the child exists and has not exited (a paused child is running)."""
        return self._proc is not None and self._proc.poll() is None

    def _command(self, binary: str) -> list[str]:
        args = [binary, "--daemonize", "no", "--dir", str(self.directory), "--save", ""]
        args += ["--appendonly", "yes" if self.persistent else "no"]
        if self.port is None:
            args += ["--port", "0"]
        else:
            args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        if self.unix_socket:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        # extra_args come last: a later directive wins, so a caller may override a limit.
        return args + list(SERVER_LIMITS) + list(self.extra_args)

    def start(self, timeout: float = 10.0) -> str:
        """Start the server, wait until it answers PING, write redis.url; return the URL."""
        if self.running:
            return self.url
        binary = self.binary or find_server_binary()
        if self.unix_socket and len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            raise EmbeddedRedisError(
                f"unix socket path too long ({len(str(self.socket_path))} > "
                f"{MAX_SOCKET_PATH} bytes): {self.socket_path}; use a shorter directory"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket of a killed server
        self._log = self.log_file.open("ab")
        parent_pid = os.getpid()
        try:
            self._proc = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
                preexec_fn=lambda: death_signal_preexec(parent_pid),
            )
        except OSError as exc:
            self._close_log()
            raise EmbeddedRedisError(f"cannot run {binary}: {exc}") from exc
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        tmp = self.url_file.with_suffix(".tmp")
        tmp.write_text(self.url + "\n")
        tmp.replace(self.url_file)
        return self.url

    def _wait_ready(self, timeout: float) -> None:
        address: str | tuple[str, int]
        if self.unix_socket:
            address = str(self.socket_path)
        else:
            assert self.port is not None
            address = ("127.0.0.1", self.port)
        deadline = time.monotonic() + timeout
        delay = 0.002
        reply: bytes | None = None
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with status {self._proc.returncode} while "
                    f"starting; last lines of {self.log_file}:\n{self._log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EmbeddedRedisError(
                    f"redis-server did not answer PING within {timeout} s "
                    f"(last reply {reply!r}); see {self.log_file}:\n{self._log_tail()}"
                )
            reply = _ping(address, min(remaining, 1.0))
            # Any reply but -LOADING (still reading its AOF) means it serves
            # commands; -NOAUTH from a password-protected server counts too.
            if reply is not None and reply and not reply.startswith(b"-LOADING"):
                return
            time.sleep(min(delay, max(remaining, 0.0)))
            delay = min(delay * 2, 0.05)

    def _log_tail(self, lines: int = 10) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _signal(self, signum: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signum)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (AOF is flushed), SIGKILL after ``timeout``; idempotent; removes redis.url."""
        if self._proc is not None:
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait()
            self._proc = None
        self._close_log()
        with contextlib.suppress(FileNotFoundError):
            self.url_file.unlink()

    def kill(self) -> None:
        """SIGKILL the server at once (no AOF flush beyond what it already wrote)."""
        if self._proc is not None:
            self._signal(signal.SIGKILL)
            self._proc.wait()
            self._proc = None
        self._close_log()
        with contextlib.suppress(FileNotFoundError):
            self.url_file.unlink()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a frozen server)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal(signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> str:
        """Stop and start again on the same socket or port with the same data directory."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
