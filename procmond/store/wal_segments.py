"""The write-ahead log's segment files: appending to them, syncing, undoing, deleting.

:class:`SegmentFiles` is the file side of :class:`procmond.store.wal.WriteAheadLog`:
it knows which segments exist, their sizes and the last seq each holds, writes
whole batches of frames all or nothing, undoes a failed write (or remembers
the repair the file system refused, see "Write failures" in
:mod:`procmond.store.wal`), fsyncs what was written, and deletes segments once
their every seq is acknowledged. Which seqs exist and which are acknowledged
is the log's business; this module only stores bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from procmond.store.wal_errors import WalError
from procmond.store.wal_format import (
    SEGMENT_HEADER_SIZE,
    PartialWriteError,
    segment_header,
    segment_name,
    write_all,
)

__all__ = ["Batch", "Segment", "SegmentFiles"]

# The log's lines keep the logger name they had before the log was split into
# modules, so that operators' filters on it still match.
_log = logging.getLogger("procmond.store.wal")


@dataclass(slots=True)
class Segment:
    """One segment file as the log knows it."""

    base: int  # first seq; events readable from it are base..last
    path: Path
    size: int
    last: int  # base - 1 while it holds no readable event


@dataclass(slots=True)
class Batch:
    """Encoded frames bound for one segment, built by ``WriteAheadLog.append``."""

    base: int  # the segment the parts go to
    parts: list[bytes]
    last: int  # the seq of the last event in parts


class SegmentFiles:
    """The segment files of one log directory; the last segment is the one written to."""

    def __init__(self, directory: Path, dir_fd: int) -> None:
        self.directory = directory
        #: The directory itself, opened for fsync after files are created or removed.
        self.dir_fd = dir_fd
        self.segments: list[Segment] = []  # in seq order; the last one is written to
        #: The current (last) segment, opened for appending; -1 while there is none.
        self.fd = -1
        #: Total size of the segment files.
        self.bytes_used = 0
        self._unsynced: list[Path] = []  # earlier segments written since the last fsync()
        self._dir_dirty = False
        #: Why the files on disk differ from this object's idea of them (a failed
        #: write that could not be undone); cleared by repair() before the next write.
        self._damage: str | None = None
        self._orphans: list[Path] = []  # segments created by a failed append, to delete

    def adopt(self, segments: list[Segment], *, reuse_last: bool, next_seq: int) -> None:
        """Take over the segments recovery found; append to the last one, or start one."""
        self.segments = segments
        self.bytes_used = sum(s.size for s in segments)
        if reuse_last:
            self.fd = os.open(segments[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        else:
            self.create_segment(next_seq)

    def create_segment(self, base: int) -> None:
        """Create the segment starting at ``base`` and make it the current one."""
        path = self.directory / segment_name(base)
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
        if self.fd >= 0:
            self._unsynced.append(self.segments[-1].path)
            os.close(self.fd)
        self.fd = fd
        self._dir_dirty = True
        self.segments.append(Segment(base, path, SEGMENT_HEADER_SIZE, base - 1))
        self.bytes_used += SEGMENT_HEADER_SIZE

    def write_current(self, data: bytes) -> None:
        """Append ``data`` to the current segment; a partial write is cut away, then raised."""
        seg = self.segments[-1]
        try:
            write_all(self.fd, data)
        except PartialWriteError as exc:
            if exc.written:
                self._truncate_current(f"writing {seg.path} failed: {exc}")
            raise WalError(f"writing {seg.path} failed: {exc}") from exc
        seg.size += len(data)
        self.bytes_used += len(data)

    def write_batches(self, batches: list[Batch]) -> None:
        """Write each batch to its segment, creating segments as needed; all or nothing."""
        first_new = len(self.segments)
        cur = self.segments[-1]
        saved = (cur.path, cur.size, cur.last, len(self._unsynced))
        try:
            for index, batch in enumerate(batches):
                if index > 0:
                    self.create_segment(batch.base)
                if batch.parts:
                    self.write_current(b"".join(batch.parts))
                    self.segments[-1].last = batch.last
        except (OSError, WalError) as exc:
            self._undo(first_new, *saved)
            if isinstance(exc, WalError):
                raise
            raise WalError(f"appending to the write-ahead log failed: {exc}") from exc

    def repair(self) -> None:
        """Bring the files back in line with this object after a failed write, or raise."""
        if self._damage is None:
            return
        seg = self.segments[-1]
        try:
            for orphan in list(self._orphans):
                orphan.unlink(missing_ok=True)
                self._orphans.remove(orphan)
                self._dir_dirty = True
            if self.fd < 0:
                self.fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            os.ftruncate(self.fd, seg.size)
        except OSError as exc:
            raise WalError(f"write-ahead log unusable: {self._damage} (still: {exc})") from exc
        _log.warning("wal: repaired after a failed write (%s)", self._damage)
        self._damage = None

    def fsync(self) -> None:
        """fsync every segment written since the last call, then the directory if it changed."""
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
            os.fsync(self.fd)
            if self._dir_dirty:
                os.fsync(self.dir_fd)
                self._dir_dirty = False
        except OSError as exc:
            raise WalError(f"fsync of the write-ahead log failed: {exc}") from exc

    def prune(self, acked: int) -> None:
        """Delete leading segments whose every seq is acknowledged (never the current one)."""
        segs = self.segments
        while len(segs) > 1 and segs[1].base - 1 <= acked:
            seg = segs[0]
            try:
                seg.path.unlink(missing_ok=True)
            except OSError as exc:  # read-only: try again at the next acknowledgement
                _log.debug("wal: cannot delete acknowledged %s yet: %s", seg.path, exc)
                return
            segs.pop(0)
            self.bytes_used -= seg.size
            self._dir_dirty = True
            if seg.path in self._unsynced:
                self._unsynced.remove(seg.path)

    def close(self) -> None:
        """Close the current segment and the directory, ignoring errors; safe to call twice."""
        for fd in (self.fd, self.dir_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self.dir_fd = -1

    def _truncate_current(self, why: str) -> None:
        """Cut the current segment back to its known size, or remember that it must be."""
        try:
            os.ftruncate(self.fd, self.segments[-1].size)  # leave no half frame behind
        except OSError as exc:
            self._damage = f"{why}; cutting the partial write away failed: {exc}"

    def _undo(self, first_new: int, path: Path, size: int, last: int, unsynced: int) -> None:
        """Forget what a failed append wrote; what the disk refuses to undo is left to repair()."""
        rotated = len(self.segments) > first_new
        for seg in self.segments[first_new:]:
            self.bytes_used -= seg.size
            try:
                seg.path.unlink(missing_ok=True)
            except OSError as exc:
                self._orphans.append(seg.path)
                self._damage = f"removing {seg.path} after a failed write failed: {exc}"
        del self.segments[first_new:]
        del self._unsynced[unsynced:]
        seg = self.segments[-1]
        self.bytes_used -= seg.size - size
        grew = seg.size != size
        seg.size = size
        seg.last = last
        if rotated:
            self._dir_dirty = True
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except OSError as exc:
                self._damage = f"reopening {path} after a failed write failed: {exc}"
                return
        if rotated or grew:
            self._truncate_current(f"undoing a failed write to {path}")
