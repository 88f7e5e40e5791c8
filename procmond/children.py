"""Child processes that must not outlive the daemon (the embedded Redis, the kernel reader).

A child started with :func:`death_signal_preexec` as its ``preexec_fn`` gets
SIGTERM when the daemon dies, SIGKILL included (the embedded-server wheels
we measured all leave an orphan behind; LIBRARY-NOTES).

Linux caveat: the death signal fires when the *thread* that forked the child
exits, so start such children from a thread that lives as long as they do
(the main thread), not from a short-lived worker thread.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Final

__all__ = ["death_signal_preexec"]

_PR_SET_PDEATHSIG: Final = 1  # from <linux/prctl.h>


def death_signal_preexec(parent_pid: int) -> None:
    """In the forked child: die with SIGTERM when the parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # The parent may have died between fork and prctl: then nobody will send
    # the signal, so send it ourselves.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)
