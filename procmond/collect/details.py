"""The expensive half of collection: fields read only when a process is new or renamed.

The command line and the executable come through psutil; the long name is
derived as psutil derives it; a uid becomes a user name through a cache; the
SHA-256 of an executable is cached by file identity and bounded by the cycle's
time budget. :func:`bounded_cmdline` keeps one command line from outgrowing
an event. When these are read is :mod:`procmond.collect.collector`'s business.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import time
from collections.abc import Iterator
from typing import Final

import psutil

from procmond.collect.text import MAX_CMDLINE_BYTES, bounded_cmdline, decode_comm, long_name

__all__ = [
    "MAX_CMDLINE_BYTES",
    "ExeHashes",
    "UserNames",
    "bounded_cmdline",
    "decode_comm",
    "long_name",
    "read_args_and_exe",
]

_HASH_CHUNK: Final = 1 << 20
# Distinct executables on one host number in the hundreds; the bound only
# keeps a pathological host (many rebuilt binaries) from growing it forever.
_HASH_CACHE_MAX: Final = 4096


def read_args_and_exe(pid: int) -> tuple[list[str], str | None]:
    """The command line and the executable, through psutil; denied ones read as empty."""
    proc = psutil.Process(pid)
    with proc.oneshot():
        try:
            args = proc.cmdline()
        except (psutil.AccessDenied, psutil.ZombieProcess):
            args = []
        try:
            exe: str | None = proc.exe() or None
        except (psutil.AccessDenied, psutil.ZombieProcess):
            exe = None
    return args, exe


class UserNames:
    """uid -> user name, cached for the collector's lifetime."""

    def __init__(self) -> None:
        self._names: dict[int, str] = {}

    def lookup(self, uid: int | None) -> str | None:
        """The user name of ``uid``; an unknown uid is shown as its number, like psutil."""
        if uid is None:
            return None
        name = self._names.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._names[uid] = name
        return name


class ExeHashes:
    """SHA-256 of executables, cached by (path, device, inode, size, mtime)."""

    def __init__(self) -> None:
        self._hashes: dict[tuple[str, int, int, int, int], str] = {}

    def digest(self, exe: str, link: str, deadline: float) -> str | None:
        """The hash of ``exe``, read through ``link``; None when unreadable or past ``deadline``
        (a ``time.monotonic()`` value)."""
        try:
            st = os.stat(link)
        except OSError:
            return None
        key = (exe, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._hashes.get(key)
        if cached is not None or time.monotonic() >= deadline:
            return cached
        digest = hashlib.sha256()
        try:
            with open(link, "rb") as f:
                for chunk in _chunks(f.fileno()):
                    digest.update(chunk)
                    if time.monotonic() >= deadline:
                        return None  # out of budget: this event goes without a hash
        except OSError:
            return None
        if len(self._hashes) >= _HASH_CACHE_MAX:
            self._hashes.pop(next(iter(self._hashes)))
        self._hashes[key] = result = digest.hexdigest()
        return result


def _chunks(fd: int) -> Iterator[bytes]:
    """Read a file descriptor to the end in large chunks."""
    while chunk := os.read(fd, _HASH_CHUNK):
        yield chunk
