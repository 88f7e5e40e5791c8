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

A ``WriteAheadLog`` is not thread-safe: it has one owner, which calls it from
one thread (or one asyncio task, through ``asyncio.to_thread`` if it must not
block the loop). Two processes cannot share a directory: an exclusive
``flock`` on ``wal.lock`` refuses the second one with :class:`WalLockedError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from procmond.store.wal_format import (
    DEFAULT_SEGMENT_BYTES,
    FRAME_HEAD,
    FRAME_OVERHEAD,
    KIND_ACK,
    KIND_DATA,
    MAX_PAYLOAD,
    NAME_RE,
    SEGMENT_HEADER_SIZE,
    U32,
    PartialWriteError,
    WalRecord,
    default_segment_bytes,
    frame,
    scan,
    segment_header,
    segment_name,
    write_all,
)

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

_log = logging.getLogger(__name__)

LOCK_NAME: Final = "wal.lock"


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


@dataclass(slots=True)
class _Segment:
    base: int  # first seq; events readable from it are base..last
    path: Path
    size: int
    last: int  # base - 1 while it holds no readable event


@dataclass(slots=True)
class _Batch:
    base: int  # the segment the parts go to
    parts: list[bytes]
    last: int  # the seq of the last event in parts


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
        self._segments: list[_Segment] = []  # in seq order; the last one is written to
        self._fd = -1  # the current (last) segment, opened for appending
        self._unsynced: list[Path] = []  # earlier segments written since the last sync()
        self._dir_dirty = False
        #: Why the files on disk differ from this object's idea of them (a failed
        #: write that could not be undone); cleared by _repair() before the next write.
        self._damage: str | None = None
        self._orphans: list[Path] = []  # segments created by a failed append, to delete
        self._next_seq = 1
        self._acked = 0
        self._persisted_ack = 0
        self._bytes_used = 0
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
        self._dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

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
        return sum(max(0, s.last - max(s.base, acked + 1) + 1) for s in self._segments)

    @property
    def bytes_used(self) -> int:
        """Total size of the segment files."""
        return self._bytes_used

    @property
    def max_total_bytes(self) -> int:
        """The cap on :attr:`bytes_used` that :meth:`append` enforces."""
        return self._max_total

    @property
    def usage_fraction(self) -> float:
        """``bytes_used / max_total_bytes``; ack frames may push it a little past 1.0."""
        return self._bytes_used / self._max_total

    @property
    def corrupt_records(self) -> int:
        """How many corruptions (not torn tails) recovery found, one per damaged segment."""
        return self._corrupt

    @property
    def segment_count(self) -> int:
        """How many segment files exist."""
        return len(self._segments)

    # -- lifecycle --------------------------------------------------------------------

    def open(self) -> list[WalRecord]:
        """Recover the directory and return the unacknowledged events in seq order."""
        if self._closed:
            raise WalClosedError("the write-ahead log is closed")
        if self._opened:
            raise WalError("open() was already called")
        found = sorted(
            (int(m.group(1)), self._dir / name)
            for name in os.listdir(self._dir)
            if (m := NAME_RE.match(name))
        )
        records: list[WalRecord] = []
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
            seg = _Segment(base, path, len(data), last)
            next_seq = max(next_seq, last + 1)
            if result.problem is None:
                reuse_last = is_last
            elif is_last and result.torn:
                _log.info("wal: truncating torn tail of %s at byte %d", path, result.end)
                self._repair_torn(path, base, result.end)
                seg.size = max(result.end, SEGMENT_HEADER_SIZE)
                reuse_last = True
            else:
                self._report(WalCorruptError(path, result.end, result.problem))
                if is_last:
                    # Unknown seqs may hide in the unreadable rest: skip past all of them.
                    hidden = (len(data) - result.end) // FRAME_OVERHEAD
                    next_seq = max(next_seq, last + 1 + hidden, base + 1)
            if is_last and reuse_last:
                next_seq = max(next_seq, base)
            self._segments.append(seg)
        if self._segments:
            # Segments are deleted only once acknowledged, so whatever precedes the first
            # one was acknowledged, even if the ack frame that said so went with it.
            acked = max(acked, self._segments[0].base - 1)
        self._acked = self._persisted_ack = min(acked, next_seq - 1)
        self._next_seq = max(next_seq, self._acked + 1)
        self._bytes_used = sum(s.size for s in self._segments)
        if reuse_last:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        else:
            self._create_segment(self._next_seq)
        self._opened = True
        self._prune()
        return [r for r in records if r.seq > self._acked]

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
            for fd in (self._fd, self._dir_fd, self._lock_fd):  # the last releases the flock
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._fd = -1

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
        self._repair()
        limit = self._segment_bytes
        cur = self._segments[-1]
        size = cur.size
        has_data = cur.last >= cur.base
        seq = self._next_seq
        batch = _Batch(cur.base, [], cur.last)
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
                batch = _Batch(seq, [], seq - 1)
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
        if self._bytes_used + total > self._max_total:
            raise WalFullError(total, self._bytes_used, self._max_total)
        self._write_batches(batches)
        self._next_seq = seq
        return records

    def sync(self) -> None:
        """Make everything appended and acknowledged so far survive a machine crash.

        Raises :class:`WalError` when the file system fails the write or the fsync.
        """
        self._require_open()
        self._repair()
        if self._acked > self._persisted_ack:
            # Ack frames are tiny and at most one per sync(), so they skip the size cap.
            self._write_current(frame(KIND_ACK, self._acked, b""))
            self._persisted_ack = self._acked
        try:
            for path in self._unsynced:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue  # deleted after its events were acknowledged
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._unsynced.clear()
            os.fsync(self._fd)
            if self._dir_dirty:
                os.fsync(self._dir_fd)
                self._dir_dirty = False
        except OSError as exc:
            raise WalError(f"fsync of the write-ahead log failed: {exc}") from exc

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
        self._prune()

    # -- internals --------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise WalClosedError("the write-ahead log is closed")
        if not self._opened:
            raise WalClosedError("call open() before using the write-ahead log")

    def _report(self, error: WalCorruptError) -> None:
        _log.warning("wal: %s; skipping the rest of the segment", error)
        self._corrupt += 1
        self.corruption_reports.append(error)

    def _repair_torn(self, path: Path, base: int, end: int) -> None:
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

    def _create_segment(self, base: int) -> None:
        path = self._dir / segment_name(base)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            write_all(fd, segment_header(base))
        except OSError as exc:
            os.close(fd)
            try:
                path.unlink(missing_ok=True)
            except OSError:
                self._orphans.append(path)
                self._damage = f"creating {path} failed: {exc}"
            raise
        if self._fd >= 0:
            self._unsynced.append(self._segments[-1].path)
            os.close(self._fd)
        self._fd = fd
        self._dir_dirty = True
        self._segments.append(_Segment(base, path, SEGMENT_HEADER_SIZE, base - 1))
        self._bytes_used += SEGMENT_HEADER_SIZE

    def _write_current(self, data: bytes) -> None:
        seg = self._segments[-1]
        try:
            write_all(self._fd, data)
        except PartialWriteError as exc:
            if exc.written:
                self._truncate_current(f"writing {seg.path} failed: {exc}")
            raise WalError(f"writing {seg.path} failed: {exc}") from exc
        seg.size += len(data)
        self._bytes_used += len(data)

    def _truncate_current(self, why: str) -> None:
        """Cut the current segment back to its known size, or remember that it must be."""
        try:
            os.ftruncate(self._fd, self._segments[-1].size)  # leave no half frame behind
        except OSError as exc:
            self._damage = f"{why}; cutting the partial write away failed: {exc}"

    def _repair(self) -> None:
        """Bring the files back in line with this object after a failed write, or raise."""
        if self._damage is None:
            return
        seg = self._segments[-1]
        try:
            for orphan in list(self._orphans):
                orphan.unlink(missing_ok=True)
                self._orphans.remove(orphan)
                self._dir_dirty = True
            if self._fd < 0:
                self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            os.ftruncate(self._fd, seg.size)
        except OSError as exc:
            raise WalError(f"write-ahead log unusable: {self._damage} (still: {exc})") from exc
        _log.warning("wal: repaired after a failed write (%s)", self._damage)
        self._damage = None

    def _write_batches(self, batches: list[_Batch]) -> None:
        """Write each batch to its segment, creating segments as needed; all or nothing."""
        first_new = len(self._segments)
        cur = self._segments[-1]
        saved = (cur.path, cur.size, cur.last, len(self._unsynced))
        try:
            for index, batch in enumerate(batches):
                if index > 0:
                    self._create_segment(batch.base)
                if batch.parts:
                    self._write_current(b"".join(batch.parts))
                    self._segments[-1].last = batch.last
        except (OSError, WalError) as exc:
            self._undo(first_new, *saved)
            if isinstance(exc, WalError):
                raise
            raise WalError(f"appending to the write-ahead log failed: {exc}") from exc

    def _undo(self, first_new: int, path: Path, size: int, last: int, unsynced: int) -> None:
        """Forget what a failed append wrote; what the disk refuses to undo is left to _repair."""
        rotated = len(self._segments) > first_new
        for seg in self._segments[first_new:]:
            self._bytes_used -= seg.size
            try:
                seg.path.unlink(missing_ok=True)
            except OSError as exc:
                self._orphans.append(seg.path)
                self._damage = f"removing {seg.path} after a failed write failed: {exc}"
        del self._segments[first_new:]
        del self._unsynced[unsynced:]
        seg = self._segments[-1]
        self._bytes_used -= seg.size - size
        grew = seg.size != size
        seg.size = size
        seg.last = last
        if rotated:
            self._dir_dirty = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except OSError as exc:
                self._damage = f"reopening {path} after a failed write failed: {exc}"
                return
        if rotated or grew:
            self._truncate_current(f"undoing a failed write to {path}")

    def _prune(self) -> None:
        """Delete leading segments whose every seq is acknowledged (never the current one)."""
        segs = self._segments
        while len(segs) > 1 and segs[1].base - 1 <= self._acked:
            seg = segs[0]
            try:
                seg.path.unlink(missing_ok=True)
            except OSError as exc:  # read-only: try again at the next acknowledgement
                _log.debug("wal: cannot delete acknowledged %s yet: %s", seg.path, exc)
                return
            segs.pop(0)
            self._bytes_used -= seg.size
            self._dir_dirty = True
            if seg.path in self._unsynced:
                self._unsynced.remove(seg.path)
