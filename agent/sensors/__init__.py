"""Sensor drivers behind one interface, and the factory that builds them for a backend.

See docs/AGENT.md, "Sensors and simulation". Public names:

- :class:`Sensor`, :class:`Reading`: the driver interface (``read(now_mono_ms)``).
- :class:`SensorConfig`, :func:`build_sensors`, :class:`SensorSet`, :class:`SensorFailure`.
- :class:`DigitalInputSensor` (``is_active()``, ``watch(callback)``) for the usage meter.
- :class:`SimulatedHardware`, :func:`load_simulated_hardware`: the simulated backend.
"""

from agent.sensors.base import Reading, Sensor, SensorUnavailable
from agent.sensors.cpu import CPUTemperatureSensor
from agent.sensors.dht22 import DHT22Sensor
from agent.sensors.gpio import DigitalInputSensor
from agent.sensors.pin_factory import DEFAULT_PIN_FACTORY, FACTORIES
from agent.sensors.registry import (
    BACKENDS,
    KINDS,
    SensorConfig,
    SensorFailure,
    SensorSet,
    build_sensors,
    validate_sensor_configs,
)
from agent.sensors.simulated import HardwareClock, SimulatedHardware, load_simulated_hardware

__all__ = [
    "BACKENDS",
    "DEFAULT_PIN_FACTORY",
    "FACTORIES",
    "KINDS",
    "CPUTemperatureSensor",
    "DHT22Sensor",
    "DigitalInputSensor",
    "HardwareClock",
    "Reading",
    "Sensor",
    "SensorConfig",
    "SensorFailure",
    "SensorSet",
    "SensorUnavailable",
    "SimulatedHardware",
    "build_sensors",
    "load_simulated_hardware",
    "validate_sensor_configs",
]
