"""Tests of the write-ahead log: recovery, rotation, limits, permissions, locking, a model."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import procmond.store.wal as wal_module
from procmond.store.wal import (
    FRAME_OVERHEAD,
    SEGMENT_HEADER_SIZE,
    WalClosedError,
    WalCorruptError,
    WalFullError,
    WalLockedError,
    WalRecord,
    WriteAheadLog,
    segment_name,
)
from procmond.store.wal_format import segment_header


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


def test_public_names_are_exported() -> None:
    """Every public name of the module is listed in __all__."""
    public = {
        name
        for name, value in vars(wal_module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == wal_module.__name__
    }
    assert public <= set(wal_module.__all__)


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


def test_torn_tail_at_every_offset_is_truncated(tmp_path: Path) -> None:
    """Cutting the last record at any byte keeps every earlier record and drops the torn one."""
    source = tmp_path / "source"
    wal, _ = reopen(source)
    kept = wal.append(payloads(3))
    start = wal.bytes_used
    wal.append([b"the-last-record" * 3])
    end = wal.bytes_used
    wal.close()
    data = (source / segment_name(1)).read_bytes()
    assert len(data) == end
    for cut in range(start, end):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        (directory / segment_name(1)).write_bytes(data[:cut])
        wal, pending = reopen(directory)
        assert pending == kept, cut
        assert wal.corrupt_records == 0
        assert (directory / segment_name(1)).stat().st_size == start
        assert [r.seq for r in wal.append([b"after"])] == [4]
        wal.close()
        wal, pending = reopen(directory)
        assert [r.seq for r in pending] == [1, 2, 3, 4]
        wal.close()


def test_torn_segment_header_is_rewritten(tmp_path: Path) -> None:
    """A last segment cut inside its header is recreated empty under its own base seq."""
    directory = tmp_path / "wal"
    directory.mkdir()
    header = segment_header(7)
    for cut in range(SEGMENT_HEADER_SIZE):
        (directory / segment_name(7)).write_bytes(header[:cut])
        wal, pending = reopen(directory)
        assert (pending, wal.next_seq, wal.corrupt_records) == ([], 7, 0)
        wal.close()
        assert (directory / segment_name(7)).read_bytes() == header


def test_zero_filled_tail_is_a_torn_write(tmp_path: Path) -> None:
    """Zero bytes after the last record (an extended but unwritten file) are truncated away."""
    directory = tmp_path / "wal"
    wal, _ = reopen(directory)
    kept = wal.append(payloads(2))
    wal.close()
    with (directory / segment_name(1)).open("ab") as f:
        f.write(b"\0" * 100)
    wal, pending = reopen(directory)
    assert pending == kept
    assert wal.corrupt_records == 0
    wal.close()


def build_three_segments(directory: Path) -> list[WalRecord]:
    """Write 12 records of 40 bytes into segments of 4 records each and return them."""
    wal, _ = reopen(directory, segment_bytes=SEGMENT_HEADER_SIZE + 4 * (FRAME_OVERHEAD + 40))
    written = wal.append(payloads(12))
    wal.close()
    assert segment_files(directory) == [segment_name(1), segment_name(5), segment_name(9)]
    return written


def flip(path: Path, offset: int) -> None:
    """Invert one byte of a file."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("field_offset", "label"),
    [(0, "length"), (5, "seq"), (FRAME_OVERHEAD + 10, "payload"), (18, "header crc")],
)
def test_flipped_byte_mid_segment_is_counted_and_later_segments_replay(
    tmp_path: Path, field_offset: int, label: str
) -> None:
    """A damaged second record is reported as corruption, and the next segments still replay."""
    directory = tmp_path / "wal"
    written = build_three_segments(directory)
    second = SEGMENT_HEADER_SIZE + FRAME_OVERHEAD + 40
    flip(directory / segment_name(1), second + field_offset)
    wal, pending = reopen(directory)
    assert wal.corrupt_records == 1, label
    assert isinstance(wal.corruption_reports[0], WalCorruptError)
    assert wal.corruption_reports[0].offset == second
    assert pending == written[:1] + written[4:]
    assert wal.next_seq == 13
    wal.close()


def test_corrupt_last_segment_skips_past_unknown_seqs(tmp_path: Path) -> None:
    """Damage in the segment being written never lets a seq that might be published repeat."""
    directory = tmp_path / "wal"
    written = build_three_segments(directory)
    flip(directory / segment_name(9), SEGMENT_HEADER_SIZE + 3)
    wal, pending = reopen(directory)
    assert wal.corrupt_records == 1
    assert pending == written[:8]
    assert wal.next_seq > 12
    new = wal.append([b"new"])
    wal.close()
    wal, pending = reopen(directory)
    assert pending == written[:8] + new
    assert wal.corrupt_records == 1
    wal.close()


def test_bad_segment_header_skips_the_segment(tmp_path: Path) -> None:
    """A segment whose header is damaged is skipped whole and counted."""
    directory = tmp_path / "wal"
    written = build_three_segments(directory)
    flip(directory / segment_name(5), 0)
    wal, pending = reopen(directory)
    assert wal.corrupt_records == 1
    assert pending == written[:4] + written[8:]
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


class WalModel(RuleBasedStateMachine):
    """A model of the log: what was appended, acknowledged, and synced, against the real one."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="wal-model-"))
        self.directory = self.root / "wal"
        self.limits = {"segment_bytes": 300, "max_total_bytes": 3000}
        self.wal = WriteAheadLog(self.directory, **self.limits)
        self.records: dict[int, bytes] = {}
        self.next_seq = 1
        self.acked = 0
        self.synced_acked = 0

    @initialize()
    def start(self) -> None:
        """Open the empty log."""
        assert self.wal.open() == []

    def teardown(self) -> None:
        """Close the log and remove its directory."""
        self.wal.close()
        shutil.rmtree(self.root)

    @rule(batch=st.lists(st.binary(max_size=60), max_size=6))
    def append(self, batch: list[bytes]) -> None:
        """Append a batch; a full log changes nothing."""
        used = self.wal.bytes_used
        try:
            written = self.wal.append(batch)
        except WalFullError:
            assert (self.wal.next_seq, self.wal.bytes_used) == (self.next_seq, used)
            return
        assert [r.seq for r in written] == list(range(self.next_seq, self.next_seq + len(batch)))
        for record in written:
            self.records[record.seq] = record.payload
        self.next_seq += len(batch)

    @rule()
    def sync(self) -> None:
        """Sync: the in-memory ack becomes durable."""
        self.wal.sync()
        self.synced_acked = self.acked

    @rule(fraction=st.floats(min_value=0, max_value=1))
    def ack(self, fraction: float) -> None:
        """Acknowledge a prefix of the pending events."""
        seq = self.acked + round(fraction * (self.next_seq - 1 - self.acked))
        self.wal.ack_through(seq)
        self.acked = max(self.acked, seq)

    def check_recovered(self, pending: list[WalRecord]) -> None:
        """Recovered events are contiguous, end at the last appended, and lose nothing unacked."""
        recovered_ack = self.wal.last_acked
        assert self.synced_acked <= recovered_ack <= self.acked
        assert [r.seq for r in pending] == list(range(recovered_ack + 1, self.next_seq))
        assert all(r.payload == self.records[r.seq] for r in pending)
        assert self.wal.next_seq == self.next_seq
        assert self.wal.corrupt_records == 0
        self.acked = self.synced_acked = recovered_ack

    @rule()
    def reopen(self) -> None:
        """Close and reopen cleanly."""
        self.wal.close()
        self.synced_acked = self.acked
        self.wal = WriteAheadLog(self.directory, **self.limits)
        self.check_recovered(self.wal.open())

    @rule(sync_first=st.booleans())
    def crash(self, sync_first: bool) -> None:
        """Reopen without close, as after a crash, with or without a sync just before."""
        if sync_first:
            self.sync()
        crash(self.wal)
        self.wal = WriteAheadLog(self.directory, **self.limits)
        self.check_recovered(self.wal.open())

    @invariant()
    def counts_match(self) -> None:
        """Pending count, next seq and bytes used agree with the model and the disk."""
        assert self.wal.next_seq == self.next_seq
        assert self.wal.pending == self.next_seq - 1 - self.acked
        assert self.wal.bytes_used == disk_bytes(self.directory)


WalModel.TestCase.settings = settings(
    WalModel.TestCase.settings, stateful_step_count=40, deadline=None
)
test_wal_state_machine = WalModel.TestCase


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
