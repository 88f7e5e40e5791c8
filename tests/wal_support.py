"""Helpers shared by the write-ahead log tests: a simulated crash, disk inspection,
payloads, reopening."""

from __future__ import annotations

import os
from pathlib import Path

from procmond.store.wal import WalRecord, WriteAheadLog


def crash(wal: WriteAheadLog) -> None:
    """Drop the log's descriptors the way a killed process would: no flush, no ack frame."""
    os.close(wal._files.fd)
    os.close(wal._files.dir_fd)
    os.close(wal._lock_fd)
    wal._closed = True


def segment_files(directory: Path) -> list[str]:
    """Return the segment file names in the directory, sorted."""
    return sorted(n for n in os.listdir(directory) if n.startswith("wal-"))


def disk_bytes(directory: Path) -> int:
    """Return the total size of the segment files."""
    return sum((directory / n).stat().st_size for n in segment_files(directory))


def payloads(count: int, start: int = 0, size: int = 40) -> list[bytes]:
    """Return distinct payloads of a fixed size."""
    return [f"event-{i:06d}".encode().ljust(size, b".") for i in range(start, start + count)]


def reopen(directory: Path, **kwargs: int) -> tuple[WriteAheadLog, list[WalRecord]]:
    """Open a new log on the directory and return it with its pending records."""
    wal = WriteAheadLog(directory, **kwargs)
    return wal, wal.open()
