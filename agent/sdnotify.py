"""sd_notify(3) without libsystemd: one datagram per message to ``$NOTIFY_SOCKET``.

systemd passes the socket path in ``NOTIFY_SOCKET`` (a leading ``@`` means the Linux
abstract namespace) and, with ``WatchdogSec=``, the interval in ``WATCHDOG_USEC``. The
service sends ``READY=1`` once it runs, ``STATUS=...`` lines for ``systemctl status``, and
``WATCHDOG=1`` at half the interval, but only when its main loop really made progress, so
a hung loop gets the service restarted (sd_watchdog_enabled(3)). Outside systemd
(no ``NOTIFY_SOCKET``) every call is a no-op. Sending never raises.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Talks to systemd's notification socket, if there is one."""

    def __init__(self, environ: Mapping[str, str], pid: int | None = None) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_ms: int | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process the watchdog is meant for (sd_watchdog_enabled(3)).
        if usec.isdigit() and int(usec) > 0 and (
                not watchdog_pid or watchdog_pid == str(pid or os.getpid())):
            self.watchdog_ms = int(usec) // 1000
        self._last_ping: int | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, message: str) -> bool:
        """Send ``message`` (newline-separated ``KEY=value`` lines); return whether it went."""
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode("utf-8"), self._address)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %r failed: %s", self._address, exc)
                self._warned = True
            return False

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1\nSTATUS=stopping")

    def watchdog(self, now_ms: int, progressed: bool) -> bool:
        """Ping the watchdog if half its interval has passed and the loop progressed.

        Returns whether a ping was sent.
        """
        if self.watchdog_ms is None or not progressed:
            return False
        if self._last_ping is not None and now_ms - self._last_ping < self.watchdog_ms // 2:
            return False
        self._last_ping = now_ms
        return self.notify("WATCHDOG=1")
