"""osutil.brokerurl: the one parser of mqtt:// and mqtts:// URLs."""

from __future__ import annotations

import pytest

from osutil.brokerurl import DEFAULT_PORTS, BrokerAddress, parse_broker_url
from protocol.errors import ConfigError


def test_missing_port_gets_the_scheme_default_visibly() -> None:
    assert DEFAULT_PORTS == {"mqtt": 1883, "mqtts": 8883}
    assert parse_broker_url("mqtt://broker.lan", "k") == BrokerAddress("broker.lan", 1883, False)
    assert parse_broker_url("mqtts://broker.lan/", "k") == BrokerAddress("broker.lan", 8883, True)


def test_explicit_port_and_ipv6_host_are_kept() -> None:
    assert parse_broker_url("mqtts://[::1]:9000", "k") == BrokerAddress("::1", 9000, True)
    host, port, tls = parse_broker_url("mqtt://127.0.0.1:18830", "k")
    assert (host, port, tls) == ("127.0.0.1", 18830, False)


@pytest.mark.parametrize("url", [
    "http://broker.lan", "mqtt://", "broker.lan:1883", "mqtt://h:notaport", "mqtt://h:70000",
    "mqtt://h:0", "mqtt://user:secret@h", "mqtt://user@h", "mqtt://h/topic", "mqtt://h?x=1",
    "mqtt://h#frag", "",
])
def test_anything_but_a_bare_broker_url_is_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^mqtt\.broker: "):
        parse_broker_url(url, "mqtt.broker")


def test_credentials_never_echoed_back_beyond_the_url_given() -> None:
    with pytest.raises(ConfigError, match="password file") as info:
        parse_broker_url("mqtt://u:p@h", "broker.url")
    assert str(info.value).count("\n") == 0
