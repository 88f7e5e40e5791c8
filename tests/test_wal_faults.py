"""The write-ahead log on a failing disk: a failed write is undone, a partial one
that cannot be cut blocks writes until repaired, a read-only disk refuses writes
and close() still releases the lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from wal_support import payloads, reopen, segment_files

import procmond.store.wal as wal_module
from procmond.store.wal import (
    FRAME_OVERHEAD,
    SEGMENT_HEADER_SIZE,
    segment_name,
)


def test_failed_write_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk error in the middle of a rotating append leaves the files and counters as before."""
    directory = tmp_path / "wal"
    wal, _ = reopen(directory, segment_bytes=SEGMENT_HEADER_SIZE + 4 * (FRAME_OVERHEAD + 40))
    kept = wal.append(payloads(2))
    snapshot = {n: (directory / n).read_bytes() for n in segment_files(directory)}
    state = (wal.next_seq, wal.bytes_used, wal.pending)
    real_write = os.write
    calls = 0

    def failing_write(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:  # current segment, new segment's header, then its events
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(wal_module.WalError, match="No space left"):
        wal.append(payloads(6, start=2))
    monkeypatch.setattr(os, "write", real_write)
    assert {n: (directory / n).read_bytes() for n in segment_files(directory)} == snapshot
    assert (wal.next_seq, wal.bytes_used, wal.pending) == state
    more = wal.append(payloads(6, start=2))
    assert more[0].seq == 3
    wal.close()
    wal, pending = reopen(directory)
    assert pending == kept + more
    wal.close()


class _ReadOnlyDisk:
    """os.write / os.ftruncate / os.unlink failing like a file system gone read-only.

    ``partial`` bytes of the first failing write still reach the file (a write cut
    short by the error), which is the case that must never be appended after.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, partial: int = 0) -> None:
        self.monkeypatch = monkeypatch
        self.partial = partial
        self.real = (os.write, os.ftruncate, os.unlink)

    def fail(self) -> None:
        real_write = self.real[0]

        def write(fd: int, data: bytes | memoryview) -> int:
            if self.partial:
                done = real_write(fd, bytes(data[: self.partial]))
                self.partial = 0
                return done
            raise OSError(30, "Read-only file system")

        def refuse(*_args: object, **_kwargs: object) -> None:
            raise OSError(30, "Read-only file system")

        self.monkeypatch.setattr(os, "write", write)
        self.monkeypatch.setattr(os, "ftruncate", refuse)
        self.monkeypatch.setattr(os, "unlink", refuse)

    def heal(self) -> None:
        write, ftruncate, unlink = self.real
        self.monkeypatch.setattr(os, "write", write)
        self.monkeypatch.setattr(os, "ftruncate", ftruncate)
        self.monkeypatch.setattr(os, "unlink", unlink)


def test_partial_write_that_cannot_be_cut_blocks_writes_until_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write cut short on a disk that then refuses the truncation: nothing is appended
    after the half frame (it would hide later events from a replay); every write says
    the log is unusable until the disk takes the repair, then all is as before."""
    directory = tmp_path / "wal"
    wal, _ = reopen(directory)
    kept = wal.append(payloads(3))
    disk = _ReadOnlyDisk(monkeypatch, partial=10)
    disk.fail()
    with pytest.raises(wal_module.WalError, match="Read-only"):
        wal.append(payloads(2, start=3))
    with pytest.raises(wal_module.WalError, match="unusable"):
        wal.append(payloads(2, start=3))
    with pytest.raises(wal_module.WalError, match="unusable"):
        wal.sync()
    assert wal.next_seq == 4
    disk.heal()
    more = wal.append(payloads(2, start=3))
    assert [r.seq for r in more] == [4, 5]
    wal.close()
    wal, pending = reopen(directory)
    assert pending == kept + more
    assert wal.corrupt_records == 0
    wal.close()


def test_read_only_disk_refuses_writes_and_ack_cleanup_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a read-only disk: appends and sync raise WalError (never EBADF or a bare
    OSError), acknowledgements still count in memory while acknowledged segments stay
    on disk, close() releases the lock anyway; once writable, all of it catches up."""
    directory = tmp_path / "wal"
    segment = SEGMENT_HEADER_SIZE + 2 * (FRAME_OVERHEAD + 40)
    wal, _ = reopen(directory, segment_bytes=segment)
    kept = wal.append(payloads(6))  # three segments
    wal.sync()
    disk = _ReadOnlyDisk(monkeypatch)
    disk.fail()
    for _ in range(3):
        with pytest.raises(wal_module.WalError, match="Read-only"):
            wal.append(payloads(3, start=6))  # would rotate: the new segment is refused
    wal.ack_through(4)
    assert wal.pending == 2
    files = segment_files(directory)  # deleting the acknowledged ones was refused
    assert {segment_name(1), segment_name(3)} <= set(files)
    with pytest.raises(wal_module.WalError, match="Read-only"):
        wal.sync()
    disk.heal()
    # The next write first removes what the failed rotation left, then goes on.
    more = wal.append(payloads(3, start=6))
    assert [r.seq for r in more] == [7, 8, 9]
    wal.ack_through(5)
    assert segment_name(1) not in segment_files(directory)
    wal.close()
    wal, pending = reopen(directory, segment_bytes=segment)
    assert pending == kept[5:] + more
    assert wal.corrupt_records == 0
    wal.close()


def test_close_on_a_read_only_disk_releases_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() whose final sync fails still releases the files and the lock."""
    directory = tmp_path / "wal"
    wal, _ = reopen(directory)
    kept = wal.append(payloads(2))
    wal.ack_through(1)
    disk = _ReadOnlyDisk(monkeypatch)
    disk.fail()
    with pytest.raises(wal_module.WalError, match="Read-only"):
        wal.close()
    disk.heal()
    wal, pending = reopen(directory)  # would raise WalLockedError if the lock were kept
    assert pending == kept  # the ack frame never reached the disk: replayed again
    wal.close()
