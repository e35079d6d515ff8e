"""Linux parent-death signal: a child that must not outlive its parent asks the kernel."""

from __future__ import annotations

import contextlib
import signal

from osutil.libc import LIBC

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to this process when its parent exits (best effort).

    Safe between fork and exec (only a prctl). Elsewhere than on Linux it does nothing.
    """
    with contextlib.suppress(OSError, AttributeError):
        if LIBC is not None:
            LIBC.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
