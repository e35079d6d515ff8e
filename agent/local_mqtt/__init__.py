"""The owner's local MQTT broker (Home Assistant): discovery configs, plaintext states of the
streams not sealed for others, credit, outbox and health. See docs/AGENT.md, "Home
Assistant"."""

from agent.local_mqtt.discovery import DeviceInfo, Entity, device_entities
from agent.local_mqtt.publisher import LocalPublisher
from agent.local_mqtt.settings import LocalMqttConfig, MetricsConfig

__all__ = ["DeviceInfo", "Entity", "LocalMqttConfig", "LocalPublisher", "MetricsConfig",
           "device_entities"]
