"""sd_notify(3) without libsystemd: one datagram per message to ``$NOTIFY_SOCKET``.

systemd passes the socket in ``NOTIFY_SOCKET`` (an absolute path, or a name in the Linux
abstract namespace written with a leading ``@``) and, with ``WatchdogSec=``, the interval
in ``WATCHDOG_USEC`` (for the process named by ``WATCHDOG_PID``, if set). A service sends
``READY=1`` once it runs, ``STATUS=...`` lines for ``systemctl status``, ``STOPPING=1``
when it shuts down, and ``WATCHDOG=1`` at half the interval, but only when its main loop
really made progress, so a hung loop gets the service restarted (sd_watchdog_enabled(3)).
Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op. Sending never raises.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _socket_address(value: str) -> str | None:
    """The address to ``sendto`` for a ``NOTIFY_SOCKET`` value, or None if unusable."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    if value:  # e.g. vsock: addresses, which a Pi-class service never gets
        log.warning("NOTIFY_SOCKET=%r is neither a path nor @name: sd_notify disabled", value)
    return None


def _watchdog_ms(environ: Mapping[str, str], pid: int) -> int | None:
    usec = environ.get("WATCHDOG_USEC", "")
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    # WATCHDOG_PID names the process the watchdog is meant for (sd_watchdog_enabled(3)).
    if not usec.isdigit() or int(usec) <= 0 or watchdog_pid not in ("", str(pid)):
        return None
    return max(1, int(usec) // 1000)


class Notifier:
    """Talks to systemd's notification socket, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None
                 ) -> None:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``environ``.

        ``environ`` defaults to :data:`os.environ`, ``pid`` to this process's.
        """
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_ms = _watchdog_ms(env, os.getpid() if pid is None else pid)
        self._last_ping: int | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Whether systemd is listening (``NOTIFY_SOCKET`` was set to a usable address)."""
        return self._address is not None

    def notify(self, message: str) -> bool:
        """Send ``message`` (newline-separated ``KEY=value`` lines); return whether it went.

        A failed send is logged once and reported as False, never raised.
        """
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %r failed: %s", self._address, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        """Tell systemd start-up is complete, with a status line."""
        return self.notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> bool:
        """Replace the line ``systemctl status`` shows."""
        return self.notify(f"STATUS={status}")

    def stopping(self) -> bool:
        """Tell systemd the service is shutting down."""
        return self.notify("STOPPING=1\nSTATUS=stopping")

    def watchdog(self, now_ms: int, progressed: bool) -> bool:
        """Ping the watchdog if the loop progressed and half the interval has passed.

        ``now_ms`` is a monotonic time in milliseconds. Returns whether a ping was sent.
        """
        if self.watchdog_ms is None or not progressed:
            return False
        if self._last_ping is not None and now_ms - self._last_ping < self.watchdog_ms // 2:
            return False
        self._last_ping = now_ms
        return self.notify("WATCHDOG=1")
