"""The write-ahead log's byte format: segment headers, frames, and reading them back.

On disk the log is a directory (mode 0700) of segment files (mode 0600) named
by the seq of their first record, ``wal-00000000000000000001.log``, so that
names sort in log order. A segment is a 20-byte header followed by frames::

    segment header  magic b"PMWAL\\x00v1" (8) | base seq u64 | crc32 of both u32
    frame           length u32 | kind u8 | seq u64 | crc32(payload) u32
                    | crc32 of the previous 17 bytes u32 | payload (length bytes)

All integers are little-endian. ``kind`` 1 is an event (``seq`` is its number;
within a segment they run base, base+1, ...); ``kind`` 2 is an acknowledgement
watermark (``seq`` is the highest acknowledged number, the payload is empty).
The frame header has its own checksum so that a damaged ``length`` is caught
instead of being read as a torn tail.

Only the write-ahead log's modules (:mod:`procmond.store.wal` and its
``wal_recovery`` and ``wal_segments``) use this module; it has no state and does
no I/O beyond :func:`write_all` on a descriptor it is given.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Final

MAGIC: Final = b"PMWAL\x00v1"
SEG_HEAD: Final = struct.Struct("<8sQ")
FRAME_HEAD: Final = struct.Struct("<IBQI")
U32: Final = struct.Struct("<I")
SEGMENT_HEADER_SIZE: Final = SEG_HEAD.size + U32.size  # 20 bytes
FRAME_OVERHEAD: Final = FRAME_HEAD.size + U32.size  # 21 bytes before each payload
KIND_DATA: Final = 1
KIND_ACK: Final = 2
MAX_PAYLOAD: Final = 0xFFFFFFFF  # the length field is a u32
NAME_RE: Final = re.compile(r"^wal-(\d{20})\.log$")


@dataclass(frozen=True, slots=True)
class WalRecord:
    """One event of the log: its sequence number and its opaque payload."""

    seq: int
    payload: bytes


#: Segment size when the caller names none: 8 MiB, but at most an eighth of the
#: size cap. Only whole segments are freed, and never the one being written, so
#: a log of one or two segments could be full of acknowledged events and still
#: refuse every append; with eight, acknowledging frees room within a segment.
DEFAULT_SEGMENT_BYTES: Final = 8 * 1024 * 1024
SEGMENTS_PER_CAP: Final = 8


def default_segment_bytes(max_total_bytes: int) -> int:
    """The segment size used for a log capped at ``max_total_bytes``."""
    return max(
        SEGMENT_HEADER_SIZE + FRAME_OVERHEAD + 1,
        min(DEFAULT_SEGMENT_BYTES, max_total_bytes // SEGMENTS_PER_CAP),
    )


def segment_name(base: int) -> str:
    """Return the file name of the segment whose first seq is ``base``."""
    return f"wal-{base:020d}.log"


def segment_header(base: int) -> bytes:
    head = SEG_HEAD.pack(MAGIC, base)
    return head + U32.pack(zlib.crc32(head))


def frame(kind: int, seq: int, payload: bytes) -> bytes:
    head = FRAME_HEAD.pack(len(payload), kind, seq, zlib.crc32(payload))
    return head + U32.pack(zlib.crc32(head)) + payload


@dataclass(slots=True)
class Scan:
    records: list[WalRecord]
    max_ack: int
    end: int  # offset just past the last good frame
    problem: str | None
    torn: bool  # the problem looks like an interrupted final write


def scan(data: bytes, base: int) -> Scan:
    """Parse one segment's bytes; stop at the first bad frame and say why."""
    size = len(data)
    if size < SEGMENT_HEADER_SIZE:
        return Scan([], 0, 0, "segment header cut short", torn=True)
    magic, head_base = SEG_HEAD.unpack_from(data, 0)
    (head_crc,) = U32.unpack_from(data, SEG_HEAD.size)
    if magic != MAGIC or head_crc != zlib.crc32(data[: SEG_HEAD.size]) or head_base != base:
        return Scan([], 0, 0, "bad segment header", torn=False)
    view = memoryview(data)
    records: list[WalRecord] = []
    max_ack = 0
    expected = base
    off = SEGMENT_HEADER_SIZE
    head_size = FRAME_HEAD.size
    while off < size:
        rest = size - off
        if rest < FRAME_OVERHEAD:
            return Scan(records, max_ack, off, "frame header cut short", torn=True)
        length, kind, seq, payload_crc = FRAME_HEAD.unpack_from(data, off)
        (frame_crc,) = U32.unpack_from(data, off + head_size)
        if frame_crc != zlib.crc32(view[off : off + head_size]):
            # A header written only in part, followed by nothing, is a torn write.
            zero_after = data.count(0, off + FRAME_OVERHEAD) == rest - FRAME_OVERHEAD
            return Scan(records, max_ack, off, "bad frame header checksum", torn=zero_after)
        end = off + FRAME_OVERHEAD + length
        if end > size:
            return Scan(records, max_ack, off, "frame cut short", torn=True)
        payload = view[off + FRAME_OVERHEAD : end]
        if zlib.crc32(payload) != payload_crc:
            return Scan(records, max_ack, off, "bad payload checksum", torn=end == size)
        if kind == KIND_DATA:
            if seq != expected:
                reason = f"seq {seq} where {expected} was expected"
                return Scan(records, max_ack, off, reason, torn=False)
            records.append(WalRecord(seq, bytes(payload)))
            expected += 1
        elif kind == KIND_ACK:
            max_ack = max(max_ack, seq)
        else:
            return Scan(records, max_ack, off, f"unknown frame kind {kind}", torn=False)
        off = end
    return Scan(records, max_ack, off, None, torn=False)


class PartialWriteError(OSError):
    """A write failed after ``written`` bytes went to the file."""

    def __init__(self, cause: OSError, written: int) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.written = written


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    done = 0
    while view:
        try:
            written = os.write(fd, view)
        except OSError as exc:
            raise PartialWriteError(exc, done) from exc
        done += written
        view = view[written:]
