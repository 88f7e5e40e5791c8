"""The write-ahead log's errors: what :mod:`procmond.store.wal` raises, and whose fault it is.

Kept apart so that the log's recovery and segment modules raise the same
classes as the log itself without importing it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "WalClosedError",
    "WalCorruptError",
    "WalError",
    "WalFullError",
    "WalLockedError",
]


class WalError(Exception):
    """Base of every write-ahead-log error.

    Hierarchy::

        WalError                 anything the log refuses or cannot do
        +-- WalFullError         the size cap is reached; nothing was written (world)
        +-- WalCorruptError      damage found on disk; reported, never raised by open() (world)
        +-- WalLockedError       another process holds the directory (world)
        +-- WalClosedError       used before open() or after close() (caller's bug)

    An ``OSError`` from the file system during a write is re-raised as a plain
    ``WalError`` (``from`` the cause) after the partial write is undone.
    """


class WalFullError(WalError):
    """Appending would pass ``max_total_bytes``; nothing was written."""

    def __init__(self, needed: int, used: int, limit: int) -> None:
        super().__init__(f"write-ahead log full: {needed} bytes needed, {used} of {limit} used")
        self.needed = needed
        self.used = used
        self.limit = limit


class WalCorruptError(WalError):
    """A damaged record that is not a torn tail; the rest of its segment was skipped."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt at byte {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class WalLockedError(WalError):
    """Another ``WriteAheadLog`` (usually another procmond) holds the directory's lock."""


class WalClosedError(WalError):
    """The log was used before :meth:`WriteAheadLog.open` or after ``close()``."""
