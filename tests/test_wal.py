"""Tests of the write-ahead log: appending, seq continuity, rotation, limits,
permissions, locking, acknowledgements.

Recovery from damage, disk faults and the model-based test have their own
files (test_wal_recovery, test_wal_faults, test_wal_model)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import ModuleType

import pytest
from wal_support import crash, disk_bytes, payloads, reopen, segment_files

import procmond.store.wal as wal_module
import procmond.store.wal_errors as wal_errors
import procmond.store.wal_recovery as wal_recovery
import procmond.store.wal_segments as wal_segments
from procmond.store.wal import (
    FRAME_OVERHEAD,
    SEGMENT_HEADER_SIZE,
    WalClosedError,
    WalFullError,
    WalLockedError,
    WriteAheadLog,
    segment_name,
)
from procmond.store.wal_format import segment_header


@pytest.mark.parametrize(
    "module", [wal_module, wal_errors, wal_recovery, wal_segments], ids=lambda m: m.__name__
)
def test_public_names_are_exported(module: ModuleType) -> None:
    """Every public name of the log's modules is listed in their __all__."""
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
    }
    assert public <= set(module.__all__)


def test_round_trip(tmp_path: Path) -> None:
    """Appended, synced records come back from a reopen with their seqs and payloads."""
    wal, pending = reopen(tmp_path / "wal")
    assert pending == []
    written = wal.append(payloads(5))
    assert [r.seq for r in written] == [1, 2, 3, 4, 5]
    assert wal.next_seq == 6
    assert wal.pending == 5
    wal.sync()
    wal.close()
    wal, pending = reopen(tmp_path / "wal")
    assert pending == written
    wal.close()


def test_append_of_nothing_is_a_no_op(tmp_path: Path) -> None:
    """Appending an empty batch assigns no seq and writes nothing."""
    wal, _ = reopen(tmp_path / "wal")
    before = wal.bytes_used
    assert wal.append([]) == []
    assert (wal.next_seq, wal.bytes_used) == (1, before)
    wal.close()


def test_seq_continues_across_reopen(tmp_path: Path) -> None:
    """A reopened log numbers new events after the last one, acknowledged or not."""
    wal, _ = reopen(tmp_path / "wal")
    wal.append(payloads(3))
    wal.ack_through(2)
    wal.close()
    wal, pending = reopen(tmp_path / "wal")
    assert [r.seq for r in pending] == [3]
    assert wal.last_acked == 2
    assert [r.seq for r in wal.append(payloads(2))] == [4, 5]
    wal.close()


def test_seq_continues_after_everything_acked_and_segments_deleted(tmp_path: Path) -> None:
    """With every event acknowledged and old segments deleted, numbering still continues."""
    directory = tmp_path / "wal"
    wal, _ = reopen(directory, segment_bytes=256)
    wal.append(payloads(20))
    assert len(segment_files(directory)) > 1
    wal.ack_through(20)
    assert wal.pending == 0
    wal.close()
    assert len(segment_files(directory)) == 1
    for expected in (21, 22):
        wal, pending = reopen(directory, segment_bytes=256)
        assert pending == []
        assert wal.next_seq == expected
        assert [r.seq for r in wal.append([b"x"])] == [expected]
        wal.ack_through(expected)
        wal.close()


def test_seq_continues_after_a_fresh_segment_without_events(tmp_path: Path) -> None:
    """A segment holding only its header still carries the next seq through a reopen."""
    directory = tmp_path / "wal"
    wal, _ = reopen(directory, segment_bytes=256)
    wal.append(payloads(8))
    wal.ack_through(8)
    wal.close()
    for name in segment_files(directory):
        os.unlink(directory / name)
    (directory / segment_name(9)).write_bytes(segment_header(9))
    wal, pending = reopen(directory, segment_bytes=256)
    assert (pending, wal.next_seq) == ([], 9)
    wal.close()


def test_rotation_and_deletion_of_acked_segments(tmp_path: Path) -> None:
    """Segments rotate at the size limit and go away once all their events are acknowledged."""
    directory = tmp_path / "wal"
    wal, _ = reopen(directory, segment_bytes=SEGMENT_HEADER_SIZE + 4 * (FRAME_OVERHEAD + 40))
    wal.append(payloads(10))
    assert segment_files(directory) == [segment_name(1), segment_name(5), segment_name(9)]
    assert all((directory / n).stat().st_size <= 4 * 61 + 20 for n in segment_files(directory))
    assert wal.bytes_used == disk_bytes(directory)
    wal.ack_through(3)
    assert len(segment_files(directory)) == 3
    wal.ack_through(4)
    assert segment_files(directory) == [segment_name(5), segment_name(9)]
    wal.ack_through(10)
    assert segment_files(directory) == [segment_name(9)]
    assert (wal.pending, wal.bytes_used) == (0, disk_bytes(directory))
    wal.close()


def test_oversized_record_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    """A record larger than segment_bytes is still stored, alone in its segment."""
    directory = tmp_path / "wal"
    wal, _ = reopen(directory, segment_bytes=128)
    big = b"B" * 500
    wal.append([b"small", big, b"small"])
    wal.close()
    wal, pending = reopen(directory, segment_bytes=128)
    assert [r.payload for r in pending] == [b"small", big, b"small"]
    assert segment_files(directory) == [segment_name(1), segment_name(2), segment_name(3)]
    wal.close()


def test_full_log_writes_nothing_and_recovers_after_acks(tmp_path: Path) -> None:
    """WalFullError leaves the files untouched, and acknowledging frees room again."""
    directory = tmp_path / "wal"
    limits = {"segment_bytes": 512, "max_total_bytes": 2048}
    wal, _ = reopen(directory, **limits)
    while wal.bytes_used + 3 * (FRAME_OVERHEAD + 40) + SEGMENT_HEADER_SIZE <= 2048:
        wal.append(payloads(3))
    snapshot = {n: (directory / n).read_bytes() for n in segment_files(directory)}
    state = (wal.next_seq, wal.bytes_used, wal.pending)
    with pytest.raises(WalFullError) as caught:
        wal.append(payloads(3))
    assert caught.value.limit == 2048
    assert {n: (directory / n).read_bytes() for n in segment_files(directory)} == snapshot
    assert (wal.next_seq, wal.bytes_used, wal.pending) == state
    assert wal.usage_fraction > 0.9
    wal.ack_through(wal.next_seq - 1)
    assert wal.usage_fraction < 0.5
    new = wal.append(payloads(3))
    assert new[0].seq == state[0]
    wal.close()
    wal, pending = reopen(directory, **limits)
    assert pending == new
    wal.close()


def test_modes_are_private(tmp_path: Path) -> None:
    """The directory is 0700 and the segment and lock files are 0600."""
    directory = tmp_path / "wal"
    wal, _ = reopen(directory)
    wal.append([b"x"])
    wal.sync()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in os.listdir(directory):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    wal.close()


def test_existing_directory_is_tightened(tmp_path: Path) -> None:
    """An existing data directory with looser permissions is set to 0700."""
    directory = tmp_path / "wal"
    directory.mkdir(mode=0o755)
    wal = WriteAheadLog(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    wal.close()


def test_lock_refuses_a_second_opener(tmp_path: Path) -> None:
    """A second log on the same directory fails clearly until the first one closes."""
    directory = tmp_path / "wal"
    first = WriteAheadLog(directory)
    with pytest.raises(WalLockedError, match=str(os.getpid())):
        WriteAheadLog(directory)
    first.close()
    second = WriteAheadLog(directory)
    second.close()


def test_use_before_open_or_after_close_is_refused(tmp_path: Path) -> None:
    """Calling the log before open() or after close() raises WalClosedError."""
    wal = WriteAheadLog(tmp_path / "wal")
    with pytest.raises(WalClosedError):
        wal.append([b"x"])
    wal.open()
    wal.close()
    wal.close()
    with pytest.raises(WalClosedError):
        wal.sync()


def test_ack_beyond_the_last_appended_seq_is_refused(tmp_path: Path) -> None:
    """Acknowledging a seq that was never appended is a caller bug and raises ValueError."""
    with WriteAheadLog(tmp_path / "wal") as wal:
        wal.open()
        wal.append([b"x"])
        with pytest.raises(ValueError, match="cannot acknowledge"):
            wal.ack_through(2)
        wal.ack_through(0)
        assert wal.last_acked == 0


def test_ack_is_persisted_at_sync(tmp_path: Path) -> None:
    """An ack lost in a crash replays its events; an ack followed by sync() does not."""
    directory = tmp_path / "wal"
    wal, _ = reopen(directory)
    wal.append(payloads(4))
    wal.sync()
    wal.ack_through(2)
    crash(wal)
    wal, pending = reopen(directory)
    assert [r.seq for r in pending] == [1, 2, 3, 4]
    wal.ack_through(2)
    wal.sync()
    crash(wal)
    wal, pending = reopen(directory)
    assert [r.seq for r in pending] == [3, 4]
    wal.close()
