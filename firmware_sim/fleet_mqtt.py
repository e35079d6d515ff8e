"""A one-off broker login check for the simulator and the test harness.

Many connections on one thread are :class:`osutil.mqtt.Hub` and
:class:`osutil.mqtt.MqttClient` (the agent's uplink uses the same client); this module only
asks "does the broker accept these credentials now?", which the harness needs after it
provisions or revokes a device.
"""

from __future__ import annotations

import time
import uuid

from osutil.mqtt import ClientOptions, Connected, ConnectionLost, Hub, MqttClient, Refused
from protocol.errors import RejectedByPeer, TransportError
from protocol.keys import Secret


def check_login(host: str, port: int, username: str, password: str,
                timeout_s: float = 5.0) -> None:
    """Log in once with these credentials (clean session, nothing kept) and log out.

    Returns when the broker accepted them. Raises RejectedByPeer if it refused them,
    TransportError if it did not answer within ``timeout_s``.
    """
    hub = Hub()
    client = MqttClient(ClientOptions(
        host=host, port=port, client_id=f"edgeproof-sim-probe-{uuid.uuid4().hex[:12]}",
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
