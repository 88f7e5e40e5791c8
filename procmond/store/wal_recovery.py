"""Recovery of a write-ahead log directory: every segment read back when the log opens.

:func:`recover` implements the "Recovery" paragraph of :mod:`procmond.store.wal`:
it scans the segments in order, truncates a torn tail of the last one away,
reports (and skips past) any other damage, and works out the acknowledgement
watermark and the next seq. It changes the files only to cut a torn tail.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from procmond.store.wal_errors import WalCorruptError
from procmond.store.wal_format import (
    FRAME_OVERHEAD,
    NAME_RE,
    SEGMENT_HEADER_SIZE,
    WalRecord,
    scan,
    segment_header,
    write_all,
)
from procmond.store.wal_segments import Segment

__all__ = ["Recovery", "recover", "repair_torn"]

# The log's lines keep the logger name they had before the log was split into
# modules, so that operators' filters on it still match.
_log = logging.getLogger("procmond.store.wal")


@dataclass(slots=True)
class Recovery:
    """What a directory held: its segments, its events, and where numbering goes on."""

    segments: list[Segment]  # in seq order
    records: list[WalRecord]  # every readable event, acknowledged or not, in seq order
    acked: int  # the acknowledgement watermark
    next_seq: int  # the seq the next appended event gets
    reuse_last: bool  # the last segment is sound and can be appended to
    reports: list[WalCorruptError]  # one per damaged segment (torn tails are not reported)


def recover(directory: Path) -> Recovery:
    """Read every segment of ``directory``; a torn tail of the last one is cut away."""
    found = sorted(
        (int(m.group(1)), directory / name)
        for name in os.listdir(directory)
        if (m := NAME_RE.match(name))
    )
    segments: list[Segment] = []
    records: list[WalRecord] = []
    reports: list[WalCorruptError] = []
    acked = 0
    next_seq = 1
    reuse_last = False
    for index, (base, path) in enumerate(found):
        is_last = index == len(found) - 1
        data = path.read_bytes()
        result = scan(data, base)
        records.extend(result.records)
        acked = max(acked, result.max_ack)
        last = result.records[-1].seq if result.records else base - 1
        seg = Segment(base, path, len(data), last)
        next_seq = max(next_seq, last + 1)
        if result.problem is None:
            reuse_last = is_last
        elif is_last and result.torn:
            _log.info("wal: truncating torn tail of %s at byte %d", path, result.end)
            repair_torn(path, base, result.end)
            seg.size = max(result.end, SEGMENT_HEADER_SIZE)
            reuse_last = True
        else:
            error = WalCorruptError(path, result.end, result.problem)
            _log.warning("wal: %s; skipping the rest of the segment", error)
            reports.append(error)
            if is_last:
                # Unknown seqs may hide in the unreadable rest: skip past all of them.
                hidden = (len(data) - result.end) // FRAME_OVERHEAD
                next_seq = max(next_seq, last + 1 + hidden, base + 1)
        if is_last and reuse_last:
            next_seq = max(next_seq, base)
        segments.append(seg)
    if segments:
        # Segments are deleted only once acknowledged, so whatever precedes the first
        # one was acknowledged, even if the ack frame that said so went with it.
        acked = max(acked, segments[0].base - 1)
    acked = min(acked, next_seq - 1)
    next_seq = max(next_seq, acked + 1)
    return Recovery(segments, records, acked, next_seq, reuse_last, reports)


def repair_torn(path: Path, base: int, end: int) -> None:
    """Cut the segment at ``path`` back to ``end`` (rewriting a torn header) and fsync it."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if end < SEGMENT_HEADER_SIZE:
            os.ftruncate(fd, 0)
            write_all(fd, segment_header(base))
        else:
            os.ftruncate(fd, end)
        os.fsync(fd)
    finally:
        os.close(fd)
