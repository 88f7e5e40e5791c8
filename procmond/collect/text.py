"""Process names and command lines as text: no psutil, no I/O.

Shared by the collector's cycles (:mod:`procmond.collect.details`) and the
kernel reader child (:mod:`procmond.collect.kernel_decode`), which imports
nothing heavier than this so that it stays a small process.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["MAX_CMDLINE_BYTES", "bounded_cmdline", "decode_comm", "long_name"]

# The kernel truncates comm to 15 bytes; psutil then takes the cmdline's
# basename when it starts with comm. We do the same so names match psutil's.
_COMM_MAX: Final = 15
#: A command line is stored up to this many bytes (UTF-8, a byte per separator),
#: then cut, with a last element saying how much was left out. Linux allows
#: several MiB of arguments; uncut, one process could make an event bigger than
#: the whole write-ahead log (1 MiB at the least) and pause collection for good.
MAX_CMDLINE_BYTES: Final = 64 * 1024


def long_name(comm: bytes, args: list[str]) -> str:
    """The process name as psutil gives it: comm, or the cmdline's basename it was cut from."""
    name = decode_comm(comm)
    if len(name) >= _COMM_MAX and args:
        basename = os.path.basename(args[0])
        if basename.startswith(name):
            name = basename
    return name


def decode_comm(comm: bytes) -> str:
    """The kernel's comm as text (it is bytes; invalid UTF-8 is replaced, as psutil does)."""
    return comm.decode("utf-8", "replace")


def bounded_cmdline(args: list[str], limit: int = MAX_CMDLINE_BYTES) -> tuple[str, ...]:
    """``args`` if they fit in ``limit`` bytes, else the head that fits plus a marker
    ``"[N bytes truncated]"`` (N counts what was left out, separators included)."""
    sizes = [len(arg.encode("utf-8", "surrogateescape")) + 1 for arg in args]
    total = sum(sizes)
    if total <= limit:
        return tuple(args)
    kept: list[str] = []
    room = limit
    for arg, size in zip(args, sizes, strict=True):
        if size > room:
            if room > 1:
                head = arg.encode("utf-8", "surrogateescape")[: room - 1]
                kept.append(head.decode("utf-8", "ignore"))
            break
        kept.append(arg)
        room -= size
    used = sum(len(arg.encode("utf-8", "surrogateescape")) + 1 for arg in kept)
    kept.append(f"[{total - used} bytes truncated]")
    return tuple(kept)
