"""osutil.brokerurl: the one parser of mqtt:// and mqtts:// URLs."""

from __future__ import annotations

import pytest

from osutil.brokerurl import (
    DEFAULT_PORTS,
    BrokerAddress,
    describe_broker_url,
    parse_broker_url,
)
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


@pytest.mark.parametrize("url", [
    "mqtt://dev01:hunter2-S3CRET@127.0.0.1:1883",  # refused for its credentials
    "mqtt://dev01:hunter2-S3CRET@h:notaport",      # refused for its port
    "http://dev01:hunter2-S3CRET@h",               # refused for its scheme
    "mqtt://dev01:hunter2-S3CRET@h:0",             # refused for port 0
    "mqtt://dev01:hunter2/S3CRET@h",               # a "/" in the password
])
def test_a_password_in_a_broker_url_never_reaches_the_error_message(url: str) -> None:
    # Before: the whole URL was echoed, and the agent's error goes to the journal.
    with pytest.raises(ConfigError, match=r"^broker\.url: ") as info:
        parse_broker_url(url, "broker.url")
    message = str(info.value)
    assert "hunter2" not in message
    assert "S3CRET" not in message
    assert "***@" in message
    assert message.count("\n") == 0
    assert "hunter2" not in describe_broker_url(url)
