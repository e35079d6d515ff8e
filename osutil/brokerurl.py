"""Broker URLs: ``mqtt://host[:port]`` and ``mqtts://host[:port]``, parsed in one place.

The agent's ``mqtt.broker``, the gateway's ``broker.url`` and the fleet's ``broker_url``
all mean the same thing, so they are read by the same function. A URL without a port gets
the scheme's registered port, named here rather than left to a library: 1883 for plain
MQTT, 8883 for MQTT over TLS (IANA service names ``mqtt`` and ``secure-mqtt``).
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

from protocol.errors import ConfigError

MQTT_DEFAULT_PORT = 1883
MQTTS_DEFAULT_PORT = 8883
DEFAULT_PORTS = {"mqtt": MQTT_DEFAULT_PORT, "mqtts": MQTTS_DEFAULT_PORT}


class BrokerAddress(NamedTuple):
    """Where a broker listens and whether to speak TLS to it."""

    host: str
    port: int
    tls: bool


def parse_broker_url(url: str, key: str) -> BrokerAddress:
    """Return host, port and TLS flag of ``mqtt://host[:port]`` or ``mqtts://host[:port]``.

    A missing port is the scheme's default (:data:`DEFAULT_PORTS`). Raises ConfigError
    naming ``key`` (the setting the URL came from) for another scheme, a missing host, a
    bad port, or a path, query, fragment or credentials in the URL (credentials belong in a
    mode-0600 file, never in a URL that ends up in logs).
    """
    shown = without_credentials(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{key}: not a valid URL or bad port: {shown!r}") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(f"{key}: must look like mqtt://host:{MQTT_DEFAULT_PORT} or "
                          f"mqtts://host:{MQTTS_DEFAULT_PORT}, got {shown!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment \
            or parts.username is not None or parts.password is not None:
        raise ConfigError(f"{key}: no path, query or credentials in the URL ({shown!r}); "
                          f"the user name and password file are settings of their own")
    if port == 0:
        raise ConfigError(f"{key}: port 0 is not a broker port ({shown!r})")
    return BrokerAddress(parts.hostname, port or DEFAULT_PORTS[parts.scheme],
                         parts.scheme == "mqtts")


def without_credentials(url: str) -> str:
    """``url`` with whatever stands between ``://`` and the last ``@`` of the authority
    (a user name and password) replaced by ``***``, for messages and logs. Looser than a
    URL parser on purpose: a password holding ``/`` or ``#`` must not show either."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def describe_broker_url(url: str) -> str:
    """``url`` with its port spelled out, for logs and status: a default port is said to be
    one (``mqtt://h:1883 (port 1883: the mqtt:// default)``), so a URL that was meant to
    name another port shows where it really points. Unparseable URLs come back unchanged,
    but never with their credentials.
    """
    url = without_credentials(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    default = DEFAULT_PORTS.get(parts.scheme)
    if port is not None or default is None or not parts.hostname:
        return url
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return (f"{parts.scheme}://{host}:{default} "
            f"(port {default}: the {parts.scheme}:// default)")
