"""Child processes that end with the process that started them.

A process killed outright (SIGKILL, the kernel's out-of-memory killer) cleans nothing up, so the
processes it started would stay behind: a server worker serving on without its supervisor, the
demo's server listening on. Linux can send a child a signal when its parent ends (the
parent-death signal, ``prctl(PR_SET_PDEATHSIG)``); it survives ``exec``. :func:`ending_with` sets
it in the child, between fork and exec, so the child ends (gracefully: SIGTERM) with its parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def parent_death_signal(signum: int) -> None:
    """The signal this process gets when its parent ends (0: none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signum), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")


def ending_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets SIGTERM when ``parent`` (the
    process starting it) ends, and ends at once if it ended already (before the signal was set)."""

    def preexec() -> None:
        parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return preexec
