"""The agent's clocks: wall time with its sync state, and the monotonic clock.

Everything that schedules work (sampling, commit windows, batching, time-outs, back-off)
uses the monotonic clock; the wall clock only goes into records. A Pi has no real-time
clock, so after a power cut the wall clock may run backwards until NTP syncs: records carry
``clock_synced`` and ``mono_ms`` so a reader can tell (see docs/AGENT.md, "Running").

The clock is an object passed in, so tests drive time without patching globals.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from osutil.libc import LIBC

_TIME_ERROR = 5  # adjtimex(2): "the system clock is not synchronized to a reliable server"
log = logging.getLogger(__name__)


class Clock(Protocol):
    """What the agent needs to know about time."""

    def wall_ms(self) -> int:
        """Wall-clock time in ms since the Unix epoch."""
        ...

    def mono_ms(self) -> int:
        """Monotonic time in ms (Linux: since boot); never goes backwards."""
        ...

    def wall_synced(self) -> bool:
        """Whether the wall clock is synchronised (NTP) right now."""
        ...


class SystemClock:
    """The real clocks. ``wall_synced`` asks the kernel via adjtimex(2) (read only).

    The sync state is asked at most once a second: it changes rarely and every record
    carries it, so the system call stays off the per-record path.
    """

    SYNC_CACHE_NS = 1_000_000_000

    def __init__(self) -> None:
        self._adjtimex = _load_adjtimex()
        self._synced = False
        self._synced_until = 0
        self.sync_unknown: str | None = None  # why the sync state cannot be read, if so

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def mono_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000

    def wall_synced(self) -> bool:
        now = time.monotonic_ns()
        if now >= self._synced_until:
            self._synced = self._ask_kernel()
            self._synced_until = now + self.SYNC_CACHE_NS
        return self._synced

    def _ask_kernel(self) -> bool:
        if self._adjtimex is None:
            return False
        # struct timex with modes = 0 only reads the state; 512 bytes covers every ABI.
        buf = ctypes.create_string_buffer(512)
        state = int(self._adjtimex(buf))
        if state < 0:
            self._cannot_ask(f"adjtimex: {os.strerror(ctypes.get_errno())}")
            return False
        return state != _TIME_ERROR

    def _cannot_ask(self, why: str) -> None:
        """Said once: every record will say ``clock_synced = false`` and no owner's grant
        is in force until the clock can be asked (a seccomp filter refusing adjtimex, as
        systemd's ProtectClock= does, is the usual cause)."""
        if self.sync_unknown is None:
            log.error("cannot read whether the clock is synchronised (%s): records say "
                      "clock_synced=false and grants are not in force; a systemd unit must "
                      "not set ProtectClock= and must allow adjtimex (docs/OPERATIONS.md)",
                      why)
        self.sync_unknown = why


def _load_adjtimex() -> Callable[[Any], int] | None:
    func: Any = getattr(LIBC, "adjtimex", None)
    if func is None:  # no C library handle, or not Linux/glibc:
        return None  # report "not synced" rather than guess
    func.argtypes = [ctypes.c_void_p]
    func.restype = ctypes.c_int
    checked: Callable[[Any], int] = func
    return checked


class ManualClock:
    """A clock that moves only when told; for tests and the benchmark."""

    def __init__(self, wall_ms: int = 1_700_000_000_000, mono_ms: int = 1_000,
                 synced: bool = True) -> None:
        self._wall = wall_ms
        self._mono = mono_ms
        self.synced = synced

    def wall_ms(self) -> int:
        return self._wall

    def mono_ms(self) -> int:
        return self._mono

    def wall_synced(self) -> bool:
        return self.synced

    def advance(self, ms: int) -> None:
        """Move both clocks forward by ``ms``."""
        self._mono += ms
        self._wall += ms

    def jump_wall(self, ms: int) -> None:
        """Step the wall clock only (negative = backwards, as after a power cut)."""
        self._wall += ms
