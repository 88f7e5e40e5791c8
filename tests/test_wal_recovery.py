"""Recovery of the write-ahead log: torn tails are cut away, corruption is reported
and skipped, numbering never reuses a seq that may have been published."""

from __future__ import annotations

from pathlib import Path

import pytest
from wal_support import payloads, reopen, segment_files

from procmond.store.wal import (
    FRAME_OVERHEAD,
    SEGMENT_HEADER_SIZE,
    WalCorruptError,
    WalRecord,
    segment_name,
)
from procmond.store.wal_format import segment_header


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
