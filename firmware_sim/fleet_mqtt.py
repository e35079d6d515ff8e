"""A one-off broker login check for the simulator and the test harness.

Many connections on one thread are :class:`osutil.mqtt.Hub` and
:class:`osutil.mqtt.MqttClient` (the agent's uplink uses the same client); this module only
asks "does the broker accept these credentials now?", which the harness needs after it
provisions or revokes a device.
"""

from __future__ import annotations

import time

from osutil.mqtt import ClientOptions, Connected, ConnectionLost, Hub, MqttClient, Refused
from protocol.errors import RejectedByPeer, TransportError
from protocol.keys import Secret


def check_login(host: str, port: int, username: str, password: str,
                timeout_s: float = 5.0) -> None:
    """Log in once with these credentials (clean session, nothing kept) and log out.

    The broker makes the user name the client id (use_username_as_clientid), so this is
    that user's session: use it before the device first connects, never while it runs
    (it would close the device's connection and discard its session).

    Returns when the broker accepted them. Raises RejectedByPeer if it refused them for
    good, TransportError if it did not answer within ``timeout_s``.
    """
    hub = Hub()
    client = MqttClient(ClientOptions(
        host=host, port=port, client_id=username,
        username=username, password=Secret(password.encode("utf-8")), session_expiry_s=0,
        clean_start=True), hub)
    try:
        client.connect()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            hub.poll(0.05)
            for event in client.take_events():
                if isinstance(event, Connected):
                    return
                if isinstance(event, Refused):
                    raise RejectedByPeer(f"broker refused {username}: {event.reason}")
                if isinstance(event, ConnectionLost):
                    raise TransportError(f"broker closed the connection: {event.reason}")
        raise TransportError(f"no CONNACK from {host}:{port} within {timeout_s} s")
    finally:
        hub.close()
