"""systemd notifications (sd_notify(3)) without libsystemd: one datagram per message.

``NOTIFY_SOCKET`` names a Unix datagram socket; a leading ``@`` means the Linux abstract
namespace. Without the variable (not started by systemd with ``Type=notify``) every call
is a no-op. ``WATCHDOG_USEC`` gives the watchdog period; the gateway pings at half of it,
and only when its main loop made progress.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING to systemd, if systemd is listening."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """Read ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` from ``environ`` (default os.environ)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if address.startswith("@"):
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s: float | None = (
            int(usec) / 2_000_000 if usec.isdigit() and int(usec) > 0 else None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, message: str) -> None:
        """Send one notification (e.g. ``READY=1``); failures are logged, never raised."""
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")
