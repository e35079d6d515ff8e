"""The MQTT uplink: batches out, verified receipts back (paho only in transport.py)."""

from agent.uplink.settings import GatewayKey, UplinkSettings
from agent.uplink.transport import BrokerSettings, MqttConfig, MqttTransport
from agent.uplink.uplink import Uplink, UplinkState, UplinkStatus

__all__ = [
    "BrokerSettings",
    "GatewayKey",
    "MqttConfig",
    "MqttTransport",
    "Uplink",
    "UplinkSettings",
    "UplinkState",
    "UplinkStatus",
]
