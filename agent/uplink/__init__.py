"""The MQTT uplink: batches out, verified receipts back (paho only in transport.py)."""

from agent.uplink.settings import GatewayKey, UplinkSettings
from agent.uplink.transport import BrokerSettings, MqttTransport, parse_broker_url
from agent.uplink.uplink import Uplink, UplinkStatus

__all__ = [
    "BrokerSettings",
    "GatewayKey",
    "MqttTransport",
    "Uplink",
    "UplinkSettings",
    "UplinkStatus",
    "parse_broker_url",
]
