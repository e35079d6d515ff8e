"""The uplink's MQTT connection: osutil's one paho wrapper, configured from the agent's config.

The broker connection as configured (:class:`MqttConfig`) and as resolved at start
(:class:`BrokerSettings`: the configured one and its password) are defined here, next to the
client that uses them; the owner's local broker (:mod:`agent.local_mqtt`) is reached with the
same two.

:class:`MqttTransport` is :class:`osutil.mqtt.MqttClient` driven by ONE thread (the uplink
thread), which calls :meth:`~osutil.mqtt.MqttClient.poll` to run the network I/O and gets
back plain event objects. How paho is used, and why (MQTT v5, persistent session, PUBACK
reason codes, permanent CONNACK codes), is said once, in :mod:`osutil.mqtt`.

The client id is the broker user name when there is one (an edgeproof broker makes the user
name the client id, so that no credential can take over another's session), else the device
id in hex (a TLS certificate's CN, which that broker makes the user name). CONNECT carries a
Maximum Packet Size (MQTT 5 §3.1.2.11.4) of the largest receipt: the broker drops anything
larger instead of sending it to the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from osutil.mqtt import ClientOptions, MqttClient, TlsFiles, Will
from protocol.keys import Secret
from protocol.mqtt_sizes import MAX_RECEIPT_PACKET_BYTES


@dataclass(frozen=True)
class MqttConfig:
    """The broker connection as configured (the password stays in its file until start).

    The connection keys of both broker sections, ``[mqtt]`` (the uplink) and ``[local_mqtt]``
    (the owner's broker); :func:`agent.config.broker_settings` reads the password file and
    wraps it in :class:`BrokerSettings` when the service starts."""

    url: str
    host: str
    port: int
    tls: bool
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    section: str = "mqtt"  # the config section, for error messages


@dataclass(frozen=True)
class BrokerSettings:
    """The broker connection as resolved: the configured ``connection`` and the password
    read from its file, a :class:`Secret` (redacted repr)."""

    connection: MqttConfig
    password: Secret | None = field(default=None, repr=False)
    connect_timeout_s: float = 10.0

    def client_options(self, client_id: str, *, will: Will | None = None,
                       maximum_packet_size: int | None = None) -> ClientOptions:
        """The options of one connection to this broker as ``client_id``."""
        c = self.connection
        tls = TlsFiles(c.ca_file, c.cert_file, c.key_file) if c.tls else None
        return ClientOptions(host=c.host, port=c.port, client_id=client_id,
                             username=c.username, password=self.password, tls=tls,
                             keepalive_s=c.keepalive_s, session_expiry_s=c.session_expiry_s,
                             connect_timeout_s=self.connect_timeout_s, label=c.url,
                             maximum_packet_size=maximum_packet_size, will=will)


class MqttTransport(MqttClient):
    """The uplink's connection to ``broker`` as ``client_id``, polled by the uplink thread."""

    def __init__(self, broker: BrokerSettings, client_id: str) -> None:
        """Build it; raise KeyFileError for a TLS key readable by others, ConfigError for
        unusable TLS files. ``client_id`` (the device id in hex) is used only when there is no
        broker user name."""
        self.broker = broker
        super().__init__(broker.client_options(broker.connection.username or client_id,
                                               maximum_packet_size=MAX_RECEIPT_PACKET_BYTES))
