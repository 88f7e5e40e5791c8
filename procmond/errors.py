"""Typed errors that become wire error replies (protocol section 4).

Hierarchy::

    ProcmondError
    ├── Refused          a request answered with an error code; the daemon goes on
    └── StartupError     procmond cannot start (bad setting, no Redis, log locked)

``Refused`` says whose fault it was through its status and category: the
caller's (``Error``/``Configuration``: INVALID_REQUEST, VALIDATION_FAILED,
INVALID_STATE, UNSUPPORTED_OPERATION), the load's (``Unavailable``: BUSY,
SHUTTING_DOWN), the clock's (``Timeout``) or ours (``INTERNAL``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Protocol

from procmond.protocol import ErrorCode

#: ``procmond run``'s exit codes (docs/operations.md).
EXIT_OK: Final = 0
EXIT_INTERNAL: Final = 1
EXIT_BAD_CONFIG: Final = 2
EXIT_CANNOT_START: Final = 3
EXIT_REGISTRATION_FAILED: Final = 4
EXIT_INTERRUPTED: Final = 130
EXIT_CODES: Final = {
    EXIT_OK: "drained and deregistered (GracefulShutdown, SIGTERM or SIGINT)",
    EXIT_INTERNAL: "unexpected internal error",
    EXIT_BAD_CONFIG: "invalid setting or command line",
    EXIT_CANNOT_START: "cannot start: no Redis server binary, embedded Redis failed, "
    "or the data directory's log is locked or unreadable",
    EXIT_REGISTRATION_FAILED: "gave up registering after --registration-attempts failures",
    EXIT_INTERRUPTED: "second SIGINT: exited at once; unsent events stay in the log",
}


class _FieldError(Protocol):
    def as_dict(self) -> dict[str, str]: ...


class ProcmondError(Exception):
    """Base of procmond's own errors."""


class StartupError(ProcmondError):
    """procmond cannot start; the message is one line for the operator."""

    def __init__(self, message: str, exit_code: int) -> None:
        self.exit_code = exit_code
        super().__init__(message)


class Refused(ProcmondError):  # noqa: N818 - names the answer the caller gets, not a failure of ours
    """A request answered with a typed error instead of a result."""

    def __init__(
        self, code: ErrorCode, message: str, context: dict[str, Any] | None = None
    ) -> None:
        self.code = code
        self.status = code.status
        self.message = message
        self.category = code.category
        self.context = context or {}
        super().__init__(f"{code.value}: {message}")

    def body(self) -> dict[str, Any]:
        """The response's ``error`` object."""
        return {
            "code": self.code.value,
            "message": self.message,
            "category": self.category.value,
            "context": self.context,
        }

    @classmethod
    def invalid_request(cls, message: str) -> Refused:
        """The envelope or payload breaks the schema, or is over 1 MiB."""
        return cls(ErrorCode.INVALID_REQUEST, message)

    @classmethod
    def unsupported_operation(cls, operation: str, served: Sequence[str]) -> Refused:
        """``operation`` is not one procmond serves."""
        return cls(
            ErrorCode.UNSUPPORTED_OPERATION,
            f"operation {operation!r} is not served by procmond",
            {"operation": operation, "supported": list(served)},
        )

    @classmethod
    def invalid_state(cls, context: dict[str, Any]) -> Refused:
        """The lifecycle state does not accept the operation now."""
        return cls(
            ErrorCode.INVALID_STATE,
            f"{context['operation']} is not accepted in state {context['state']}",
            context,
        )

    @classmethod
    def validation_failed(cls, errors: Sequence[_FieldError]) -> Refused:
        """UpdateConfig values are wrong; nothing changed."""
        listed = [e.as_dict() for e in errors]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in listed)
        return cls(
            ErrorCode.VALIDATION_FAILED,
            f"configuration update refused, nothing changed: {summary}",
            {"errors": listed},
        )

    @classmethod
    def busy(cls, retry_after_ms: int) -> Refused:
        """The mailbox is full."""
        return cls(
            ErrorCode.BUSY,
            "the collector's mailbox is full; retry later",
            {"retry_after_ms": retry_after_ms},
        )

    @classmethod
    def shutting_down(cls, state: str, context: dict[str, Any] | None = None) -> Refused:
        """The collector is draining or gone."""
        return cls(
            ErrorCode.SHUTTING_DOWN,
            f"the collector is shutting down (state {state})",
            {"state": state, **(context or {})},
        )

    @classmethod
    def deadline_exceeded(cls, message: str) -> Refused:
        """The deadline passed before execution; nothing was executed."""
        return cls(ErrorCode.DEADLINE_EXCEEDED, message)

    @classmethod
    def timeout(cls, message: str) -> Refused:
        """Execution did not finish in time."""
        return cls(ErrorCode.TIMEOUT, message)

    @classmethod
    def internal(cls, message: str) -> Refused:
        """Anything unexpected; the daemon keeps running."""
        return cls(ErrorCode.INTERNAL, message)
