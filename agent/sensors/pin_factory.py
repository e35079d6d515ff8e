"""gpiozero pin factories, chosen by name and constructed explicitly.

gpiozero, left alone, probes for a pin library and falls back (eventually to a mock) with
only a warning. The agent never lets it: the configured name (``pin_factory`` in the
config, default ``lgpio``, the one that works on every Pi including the Pi 5) is
constructed here, passed as ``pin_factory=`` to every device, and a failure to load it is an
error for the sensors that need it, never a silent switch to another factory.

``mock`` (gpiozero's MockFactory) is accepted only from the simulated backend, which
brings its own factory; asking for it by name with real hardware is a ConfigError.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from protocol.errors import ConfigError

# name -> (module, class)
FACTORIES: dict[str, tuple[str, str]] = {
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
    "native": ("gpiozero.pins.native", "NativeFactory"),
    "mock": ("gpiozero.pins.mock", "MockFactory"),
}
DEFAULT_PIN_FACTORY = "lgpio"

PinFactoryLoader = Callable[[str], Any]


class PinFactoryUnavailable(Exception):
    """The named pin factory could not be constructed on this machine (``detail`` says why).

    Internal to agent.sensors: the registry turns it into SensorUnavailable for each
    sensor that needed the factory.
    """

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"pin factory {name!r} unavailable: {detail}")
        self.detail = f"pin factory {name!r} unavailable: {detail}"


def check_pin_factory_name(name: str, *, simulated: bool) -> None:
    """Raise ConfigError (naming ``pin_factory``) unless ``name`` is allowed here."""
    if name not in FACTORIES:
        raise ConfigError(f"pin_factory: unknown {name!r}; choose one of {sorted(FACTORIES)}")
    if name == "mock" and not simulated:
        raise ConfigError("pin_factory: 'mock' is only available with the simulated backend")


def load_pin_factory(name: str) -> Any:
    """Construct the gpiozero pin factory called ``name`` (a key of FACTORIES).

    Returns the factory. Raises PinFactoryUnavailable when its library is missing or it
    cannot open the GPIO chip (for example lgpio on a laptop).
    """
    module_name, class_name = FACTORIES[name]
    try:
        module = importlib.import_module(module_name)
        return getattr(module, class_name)()
    except Exception as exc:
        raise PinFactoryUnavailable(name, f"{type(exc).__name__}: {exc}") from exc


class LazyPinFactory:
    """Loads the named factory once, on first use, and remembers a failure."""

    def __init__(self, name: str, loader: PinFactoryLoader = load_pin_factory) -> None:
        self.name = name
        self._loader = loader
        self._factory: Any = None
        self._failure: PinFactoryUnavailable | None = None

    def get(self) -> Any:
        """Return the factory. Raises PinFactoryUnavailable (every time, once failed)."""
        if self._failure is not None:
            raise self._failure
        if self._factory is None:
            try:
                self._factory = self._loader(self.name)
            except PinFactoryUnavailable as exc:
                self._failure = exc
                raise
        return self._factory

    @property
    def loaded(self) -> bool:
        return self._factory is not None

    def close(self) -> None:
        """Close the factory if it was loaded (releases the GPIO chip)."""
        if self._factory is not None:
            try:
                self._factory.close()
            finally:
                self._factory = None
