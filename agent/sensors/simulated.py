"""The seam to simulated hardware: what the agent needs from it, and how it is loaded.

The agent never imports ``firmware_sim`` statically (imports point one way). When the
operator asks for simulation (``--simulate`` / ``backend = "simulated"``), the CLI calls
:func:`load_simulated_hardware`, which imports ``firmware_sim.hardware`` by name. The
object it returns satisfies :class:`SimulatedHardware` and supplies what sits *below* the
agent's drivers: gpiozero MockFactory pins driven by physical models, a stand-in for the
``adafruit_dht`` module, and a CPU temperature file. The drivers above are the real ones.

Simulation is never a fallback: nothing here runs unless it was asked for by name.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from protocol.errors import ConfigError

SIMULATED_HARDWARE_MODULE = "firmware_sim.hardware"


class HardwareClock(Protocol):
    """The agent's clocks as the simulated world reads them."""

    def mono_ms(self) -> int:
        """Monotonic milliseconds since boot."""
        ...

    def wall_ms(self) -> int:
        """Wall-clock milliseconds since the Unix epoch (may jump)."""
        ...


@runtime_checkable
class SimulatedHardware(Protocol):
    """Simulated hardware below the drivers (implemented in ``firmware_sim.hardware``)."""

    def pin_factory(self) -> Any:
        """The gpiozero pin factory (a MockFactory) whose pins the models drive."""
        ...

    def dht_module(self) -> Any:
        """A module-like object with ``DHT22(pin, use_pulseio=...)``, like adafruit_dht."""
        ...

    def dht_pin(self, bcm: int) -> object:
        """What to pass as the DHT22's pin (the real library takes ``board.D<bcm>``)."""
        ...

    def cpu_temp_file(self) -> Path:
        """The file the thermal model writes, in millidegrees Celsius like sysfs."""
        ...

    def advance(self, now_wall_s: float, now_mono_ms: int) -> None:
        """Move the world to this time: drive pins, update models and files."""
        ...

    def close(self) -> None:
        """Release the pins and files."""
        ...


def load_simulated_hardware(
    seed: int,
    state_dir: Path,
    clock: HardwareClock,
    *,
    module_name: str = SIMULATED_HARDWARE_MODULE,
    **options: Any,
) -> SimulatedHardware:
    """Import ``module_name`` (``firmware_sim.hardware``) by name and build its
    ``SimulatedHardware(seed=, state_dir=, clock=, **options)``.

    ``options`` pass through to it (wiring, failure rates, ...). Returns the simulated
    hardware. Raises ConfigError when the module is not importable or does not provide
    the interface (simulation was asked for, so its absence is the operator's problem).
    """
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"backend: simulated hardware unavailable ({module_name}: {exc})"
                          ) from exc
    factory = getattr(module, "SimulatedHardware", None)
    if factory is None:
        raise ConfigError(f"backend: {module_name} has no SimulatedHardware")
    hardware = factory(seed=seed, state_dir=Path(state_dir), clock=clock, **options)
    if not isinstance(hardware, SimulatedHardware):
        raise ConfigError(f"backend: {module_name} does not provide simulated hardware")
    return hardware
