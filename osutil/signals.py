"""Signals acted on by a helper thread, never inside the signal handler.

CPython runs a Python signal handler on the main thread between two bytecodes, wherever
that thread happens to be: inside ``threading.Event.wait()`` with the Event's lock held,
say, or half-way through a log line. A handler that calls ``Event.set()`` then waits for a
lock its own thread holds, and the process hangs for good (seen: ``make demo`` ignoring a
Ctrl-C for ten minutes; a loop sending one signal at a time to a thread waiting on an Event
hangs it within a few thousand signals). A handler that logs can re-enter the stream's
buffered writer and raise.

:class:`SignalRelay` installs a handler that does one thing no lock can block: it writes
the signal's number to a non-blocking pipe. A daemon thread reads the pipe and calls the
callback with each number, in order, as ordinary code that may take locks, log and set
Events. A pipe that is full (tens of thousands of signals not yet handled) drops the
newest: the ones before it are still pending.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

_log = logging.getLogger(__name__)


class SignalRelay:
    """Run ``callback(signum)`` on a helper thread for each of ``signals`` received.

    Use as a context manager, or :meth:`install` and :meth:`restore`; both from the main
    thread (Python's rule for ``signal.signal``)."""

    def __init__(self, signals: Iterable[int], callback: Callable[[int], None],
                 name: str = "signal-relay") -> None:
        self.signals = tuple(signals)
        self.callback = callback
        self.name = name
        self._saved: dict[int, Any] = {}
        self._write_fd: int | None = None
        self._thread: threading.Thread | None = None

    def install(self) -> SignalRelay:
        """Start the helper thread, then route the signals to it."""
        if self._write_fd is not None:
            return self
        read_fd, write_fd = os.pipe()  # not inherited by child processes (PEP 446)
        os.set_blocking(write_fd, False)
        self._write_fd = write_fd
        self._thread = threading.Thread(target=self._relay, args=(read_fd,),
                                        name=self.name, daemon=True)
        self._thread.start()
        for sig in self.signals:
            self._saved[sig] = signal.signal(sig, self.handle)
        return self

    def restore(self) -> None:
        """Put the previous handlers back; the helper thread passes on what is already in
        the pipe, then ends (it is a daemon: a callback still running never holds up exit)."""
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()
        if self._write_fd is not None:
            os.close(self._write_fd)  # the helper reads what is left, then end of file
            self._write_fd = None
        self._thread = None

    def __enter__(self) -> SignalRelay:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        """The installed handler: hand the number to the helper thread, take no lock."""
        fd = self._write_fd
        if fd is None:
            return
        # Full (BlockingIOError): earlier signals are still pending. Closed: restored.
        with contextlib.suppress(OSError):
            os.write(fd, bytes((signum,)))

    def _relay(self, read_fd: int) -> None:
        try:
            while data := os.read(read_fd, 64):
                for signum in data:
                    try:
                        self.callback(signum)
                    except Exception:  # noqa: BLE001 - a bug; the next signal still counts
                        _log.exception("%s: signal %d: the handler failed", self.name, signum)
        finally:
            os.close(read_fd)
