"""Durable write-ahead log of process events (stdlib only).

Theory of operation
-------------------
Every event gets a sequence number ``seq`` (1, 2, 3, ... per data directory,
never reused, continuing across restarts). The daemon appends an event here
*before* publishing it to Redis and acknowledges it with
:meth:`WriteAheadLog.ack_through` once Redis has stored it. Events are
published in seq order, so an acknowledgement is a watermark.

On disk the log is a directory (mode 0700) of segment files (mode 0600);
their byte format, and the reading of it, is :mod:`procmond.store.wal_format`.

Writes go straight to the kernel (``os.write``), so a crash of the process
loses nothing; :meth:`WriteAheadLog.sync` makes them survive a crash of the
machine (fsync of every segment written since the last sync, then the
directory when files were created or removed). Acknowledgements are kept in
memory and written as one ack frame at the next ``sync()``: losing one only
replays events that Redis already has, which at-least-once delivery allows.

Segments whose events are all acknowledged are deleted, except the one being
written: it always exists, and its header carries the next seq even when it
holds no event, which is how numbering continues after everything was
acknowledged.

Recovery (:meth:`WriteAheadLog.open`) reads every segment in order. A damaged
final frame of the last segment (cut short, or failing its checksum where it
ends the file, or zero-filled) is a torn write: it is truncated away silently.
Any other damage is corruption: it is logged, counted in
:attr:`WriteAheadLog.corrupt_records`, kept as a :class:`WalCorruptError` in
:attr:`WriteAheadLog.corruption_reports`, and the rest of that segment is
skipped; start-up never fails because of it. When the damaged segment is the
last one, the seqs that its unreadable part may have used are unknown, so the
next seq is pushed past the most frames that could fit there: a gap in seqs
(reported downstream as lost events, which they are) is safe, reusing a seq
that may already have been published is not.

Write failures (``ENOSPC``, ``EROFS``, ``EIO``) raise :class:`WalError` and
leave the log as it was before the call: a partial frame is truncated away,
a segment created for the call is removed. When the file system refuses even
that (read-only), the repair is remembered and retried before the next write,
and every write raises until it succeeds; nothing is ever appended after a
partial frame, so a later replay cannot lose events behind one. Deleting an
acknowledged segment that the file system refuses is retried at the next
acknowledgement (it only costs space).

The log is split by responsibility: the byte format is
:mod:`procmond.store.wal_format`, the errors :mod:`procmond.store.wal_errors`,
reading a directory back :mod:`procmond.store.wal_recovery`, and writing,
syncing, undoing and deleting segment files :mod:`procmond.store.wal_segments`;
this module keeps the seqs, the acknowledgements and the lock.

A ``WriteAheadLog`` is not thread-safe: it has one owner, which calls it from
one thread (or one asyncio task, through ``asyncio.to_thread`` if it must not
block the loop). Two processes cannot share a directory: an exclusive
``flock`` on ``wal.lock`` refuses the second one with :class:`WalLockedError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from procmond.store.wal_errors import (
    WalClosedError,
    WalCorruptError,
    WalError,
    WalFullError,
    WalLockedError,
)
from procmond.store.wal_format import (
    DEFAULT_SEGMENT_BYTES,
    FRAME_HEAD,
    FRAME_OVERHEAD,
    KIND_ACK,
    KIND_DATA,
    MAX_PAYLOAD,
    SEGMENT_HEADER_SIZE,
    U32,
    WalRecord,
    default_segment_bytes,
    frame,
    segment_name,
)
from procmond.store.wal_recovery import recover
from procmond.store.wal_segments import Batch, SegmentFiles

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "FRAME_OVERHEAD",
    "LOCK_NAME",
    "SEGMENT_HEADER_SIZE",
    "WalClosedError",
    "WalCorruptError",
    "WalError",
    "WalFullError",
    "WalLockedError",
    "WalRecord",
    "WriteAheadLog",
    "default_segment_bytes",
    "segment_name",
]

LOCK_NAME: Final = "wal.lock"


class WriteAheadLog:
    """The durable log of events not yet acknowledged by Redis (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int | None = None,
        max_total_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        if segment_bytes is None:
            segment_bytes = default_segment_bytes(max_total_bytes)
        if segment_bytes <= SEGMENT_HEADER_SIZE + FRAME_OVERHEAD:
            raise ValueError(f"segment_bytes too small: {segment_bytes}")
        if max_total_bytes < segment_bytes:
            raise ValueError("max_total_bytes must be at least segment_bytes")
        self._dir = Path(directory)
        self._segment_bytes = segment_bytes
        self._max_total = max_total_bytes
        self._next_seq = 1
        self._acked = 0
        self._persisted_ack = 0
        self._corrupt = 0
        self.corruption_reports: list[WalCorruptError] = []
        self._opened = False
        self._closed = False

        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._dir, 0o700)  # also tighten a directory that already existed
        lock_path = self._dir / LOCK_NAME
        self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self._lock_fd, 32, 0).decode("ascii", "replace").strip()
            os.close(self._lock_fd)
            raise WalLockedError(
                f"{self._dir} is in use by another process (pid {holder or 'unknown'});"
                f" two procmond cannot share one data directory"
            ) from exc
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._files = SegmentFiles(self._dir, dir_fd)

    # -- properties -------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The data directory."""
        return self._dir

    @property
    def next_seq(self) -> int:
        """The seq the next appended event will get."""
        return self._next_seq

    @property
    def last_acked(self) -> int:
        """The acknowledgement watermark: every seq up to it is done (0: none)."""
        return self._acked

    @property
    def pending(self) -> int:
        """How many readable events are not acknowledged yet."""
        acked = self._acked
        return sum(max(0, s.last - max(s.base, acked + 1) + 1) for s in self._files.segments)

    @property
    def bytes_used(self) -> int:
        """Total size of the segment files."""
        return self._files.bytes_used

    @property
    def max_total_bytes(self) -> int:
        """The cap on :attr:`bytes_used` that :meth:`append` enforces."""
        return self._max_total

    @property
    def usage_fraction(self) -> float:
        """``bytes_used / max_total_bytes``; ack frames may push it a little past 1.0."""
        return self._files.bytes_used / self._max_total

    @property
    def corrupt_records(self) -> int:
        """How many corruptions (not torn tails) recovery found, one per damaged segment."""
        return self._corrupt

    @property
    def segment_count(self) -> int:
        """How many segment files exist."""
        return len(self._files.segments)

    # -- lifecycle --------------------------------------------------------------------

    def open(self) -> list[WalRecord]:
        """Recover the directory and return the unacknowledged events in seq order."""
        if self._closed:
            raise WalClosedError("the write-ahead log is closed")
        if self._opened:
            raise WalError("open() was already called")
        found = recover(self._dir)
        self._corrupt += len(found.reports)
        self.corruption_reports.extend(found.reports)
        self._acked = self._persisted_ack = found.acked
        self._next_seq = found.next_seq
        self._files.adopt(found.segments, reuse_last=found.reuse_last, next_seq=found.next_seq)
        self._opened = True
        self._files.prune(self._acked)
        return [r for r in found.records if r.seq > self._acked]

    def close(self) -> None:
        """Sync and release the files and the lock; safe to call twice.

        The files and the lock are released even when the sync fails (the
        :class:`WalError` is raised after that).
        """
        if self._closed:
            return
        try:
            if self._opened:
                self.sync()
        finally:
            self._closed = True
            self._files.close()
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # releases the flock, so only after the files

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the log ----------------------------------------------------------------------

    def append(self, payloads: Sequence[bytes]) -> list[WalRecord]:
        """Give each payload the next seq and write it (not yet fsynced; see :meth:`sync`).

        Raises :class:`WalFullError`, writing nothing, if the records would
        push :attr:`bytes_used` past :attr:`max_total_bytes`, and
        :class:`WalError` if the file system refuses the write (nothing of it
        is kept).
        """
        self._require_open()
        if not payloads:
            return []
        files = self._files
        files.repair()
        limit = self._segment_bytes
        cur = files.segments[-1]
        size = cur.size
        has_data = cur.last >= cur.base
        seq = self._next_seq
        batch = Batch(cur.base, [], cur.last)
        batches = [batch]
        records: list[WalRecord] = []
        total = 0
        head_pack = FRAME_HEAD.pack
        u32_pack = U32.pack
        crc32 = zlib.crc32
        for payload in payloads:
            length = len(payload)
            if length > MAX_PAYLOAD:
                raise ValueError(f"payload of {length} bytes is too large for one record")
            need = FRAME_OVERHEAD + length
            if has_data and size + need > limit:
                # Rotate only after at least one event, so a new name never repeats.
                batch = Batch(seq, [], seq - 1)
                batches.append(batch)
                size = SEGMENT_HEADER_SIZE
                total += SEGMENT_HEADER_SIZE
            head = head_pack(length, KIND_DATA, seq, crc32(payload))
            batch.parts += (head, u32_pack(crc32(head)), payload)
            batch.last = seq
            size += need
            total += need
            has_data = True
            records.append(WalRecord(seq, payload))
            seq += 1
        if files.bytes_used + total > self._max_total:
            raise WalFullError(total, files.bytes_used, self._max_total)
        files.write_batches(batches)
        self._next_seq = seq
        return records

    def sync(self) -> None:
        """Make everything appended and acknowledged so far survive a machine crash.

        Raises :class:`WalError` when the file system fails the write or the fsync.
        """
        self._require_open()
        self._files.repair()
        if self._acked > self._persisted_ack:
            # Ack frames are tiny and at most one per sync(), so they skip the size cap.
            self._files.write_current(frame(KIND_ACK, self._acked, b""))
            self._persisted_ack = self._acked
        self._files.fsync()

    def ack_through(self, seq: int) -> None:
        """Acknowledge every event up to ``seq`` and delete segments no longer needed.

        The watermark is written at the next :meth:`sync`; a crash before it
        only replays already delivered events.
        """
        self._require_open()
        if seq <= self._acked:
            return
        if seq >= self._next_seq:
            raise ValueError(
                f"cannot acknowledge seq {seq}: the last appended is {self._next_seq - 1}"
            )
        self._acked = seq
        self._files.prune(seq)

    def _require_open(self) -> None:
        if self._closed:
            raise WalClosedError("the write-ahead log is closed")
        if not self._opened:
            raise WalClosedError("call open() before using the write-ahead log")
