"""``osutil.lograte``: keep one repeated error from flooding the journal.

A rate limit per kind of log line, installed by the agent and the gateway on their log
handlers (docs/OPERATIONS.md, "Read the logs").

A service that fails the same way thousands of times a second (a full file-handle table,
a broker refusing every connection) must not turn that into hundreds of megabytes of
journal: it would push out every other line and fill the disk. :class:`RepeatLimiter` is a
:class:`logging.Filter` for the process's handlers. Lines of the same kind (logger, level,
message template and exception type; the arguments may differ) pass ``burst`` times per
``window_s``; the rest are counted, and the first line of that kind after the window says
how many were suppressed. :meth:`RepeatLimiter.report` logs what is still pending (at
shutdown). Nothing is dropped without being counted.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

DEFAULT_BURST = 5
DEFAULT_WINDOW_S = 60.0
MAX_KINDS = 1024  # kinds remembered at once; the oldest window is forgotten first

_Kind = tuple[str, int, str, str]
log = logging.getLogger(__name__)


@dataclass
class _Window:
    start: float
    passed: int = 1
    suppressed: int = 0


class RepeatLimiter(logging.Filter):
    """A filter passing at most ``burst`` lines of one kind per ``window_s`` seconds."""

    def __init__(self, burst: int = DEFAULT_BURST, window_s: float = DEFAULT_WINDOW_S, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        if burst < 1 or window_s <= 0:
            raise ValueError("burst must be >= 1 and window_s > 0")
        self.burst, self.window_s = burst, window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[_Kind, _Window] = {}
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """Return whether ``record`` is emitted (annotated with earlier suppressions)."""
        exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        kind = (record.name, record.levelno, str(record.msg), exc_type)
        with self._lock:
            now = self._clock()
            window = self._windows.get(kind)
            if window is not None and now - window.start < self.window_s:
                if window.passed < self.burst:
                    window.passed += 1
                    return True
                window.suppressed += 1
                self.suppressed_total += 1
                return False
            self._windows.pop(kind, None)
            self._windows[kind] = _Window(now)
            if len(self._windows) > MAX_KINDS:
                del self._windows[next(iter(self._windows))]
        if window is not None and window.suppressed:
            # Appended to the template (no "%" in it): the arguments format as before.
            record.msg = (f"{record.msg} [{window.suppressed} more like this suppressed "
                          f"in the {self.window_s:g} s before]")
        return True

    def report(self) -> None:
        """Log one line per kind of line still suppressed, and forget them (at shutdown)."""
        with self._lock:
            pending = [(kind, w.suppressed) for kind, w in self._windows.items() if w.suppressed]
            self._windows.clear()
        for (name, level, template, _), count in pending:
            # The whole line as the message (no arguments, so it is not %-formatted):
            # each summary is a kind of its own.
            log.log(level, f"{count} more lines like {name}: {template!r} were suppressed")


def limit_repeats(logger: logging.Logger | None = None, burst: int = DEFAULT_BURST,
                  window_s: float = DEFAULT_WINDOW_S) -> RepeatLimiter:
    """Install one :class:`RepeatLimiter` on every handler of ``logger`` (the root).

    Returns the limiter, whose :meth:`~RepeatLimiter.report` the caller runs at exit.
    """
    limiter = RepeatLimiter(burst, window_s)
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(limiter)
    return limiter


def log_to_stdout(level: str) -> RepeatLimiter:
    """Log to stdout at ``level``, replacing the root's handlers (journald adds timestamps
    and the unit name), one :class:`RepeatLimiter` on them; return it (report it at exit)."""
    logging.basicConfig(level=level.upper(), stream=sys.stdout,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    return limit_repeats()


@contextlib.contextmanager
def service_logging(level: str) -> Iterator[RepeatLimiter]:
    """For one run of a service's ``main()``: log to stdout at ``level`` (journald adds the
    timestamps and the unit name), repeats limited (:func:`limit_repeats`, reported at the
    end), and the root logger's handlers and level put back afterwards.

    ``main()`` may run several times in one process (tests): a run must neither log into
    the ``sys.stdout`` of an earlier one (closed by then) nor leave its level behind.
    """
    root = logging.getLogger()
    handlers, level_before = list(root.handlers), root.level
    limiter = log_to_stdout(level)
    try:
        yield limiter
    finally:
        limiter.report()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level_before)
