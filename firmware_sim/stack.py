"""A private edgeproof installation in one directory: a fleet, its broker and its gateway.

Everything is made the way an operator makes it (docs/OPERATIONS.md), only on loopback and
in a temporary directory: ``edgeproof-provision init`` creates the fleet,
``broker-config`` writes the locked-down Mosquitto config (anonymous access off, PBKDF2
password file, per-device ACL), the real ``mosquitto`` runs it, the fleet is told to reload
the broker through a pid file, and the real gateway runs as its own process from the
``gateway.toml`` that ``init`` wrote. Devices and recipients are added with
``edgeproof-provision`` too, so registration goes over the gateway's HTTP API and each
device gets its own broker credential.

Used by the demo, by ``edgeproof-sim fleet``'s tests, by the fault harness
(``tests/harness/testbed.py`` adds agents and faults on top) and by the provisioning tests.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from firmware_sim import fleet_mqtt
from firmware_sim.broker import MosquittoBroker, free_port
from firmware_sim.procs import GatewayProcess, StartError
from protocol.errors import EdgeproofError, RejectedByPeer, TransportError
from provisioning import cli as provision_cli
from provisioning import fleet as fleet_files
from provisioning.devices_store import AGENT_CONFIG, BROKER_PASSWORD, DEVICE_KEY, STATE

# A bound for a slow, loaded machine; the wait returns as soon as the login works.
LOGIN_TIMEOUT_S = 30.0


class StackError(EdgeproofError):
    """A step of building or running the private installation failed."""


class Interrupted(EdgeproofError):
    """The user asked to stop (Ctrl-C or SIGTERM) while a step was running."""


@dataclass(frozen=True)
class SimDevice:
    """A provisioned device and its bundle (laid out like the device's file system)."""

    name: str
    device_id: str
    bundle: Path

    @property
    def config(self) -> Path:
        return self.bundle / AGENT_CONFIG

    @property
    def password_file(self) -> Path:
        return self.bundle / BROKER_PASSWORD

    @property
    def state_dir(self) -> Path:
        return self.bundle / STATE

    @property
    def key_file(self) -> Path:
        return self.bundle / DEVICE_KEY

    @property
    def username(self) -> str:
        """The device's broker login (``device add`` makes it the device id)."""
        return self.device_id

    @property
    def password(self) -> str:
        """The device's broker password, read from its bundle."""
        return self.password_file.read_text(encoding="utf-8").strip()


def run_provision(argv: Sequence[str]) -> str:
    """Run ``edgeproof-provision ARGV`` in this process; return what it printed on stdout.

    Raises StackError with its one-line diagnostic if it fails.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = provision_cli.main(list(argv))
    if code != 0:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        raise StackError(lines[-1] if lines else f"edgeproof-provision {argv[0]} failed")
    return out.getvalue()


@dataclass
class Stack:
    """A fleet directory with its Mosquitto and gateway running, all under ``workdir``."""

    workdir: Path
    owner: str = "demo-household"
    name: str = "demo.local/edgeproof"
    rate_micro_per_hour: int = 3_600_000
    checkpoint_interval_s: float = 2
    every_leaves: int = 1000
    should_stop: Callable[[], bool] = lambda: False
    # Extra ``broker-config`` arguments (e.g. TLS files), given the working directory.
    broker_args: Callable[[Path], Sequence[str]] = lambda workdir: ()
    broker_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    broker: MosquittoBroker = field(init=False)
    gateway: GatewayProcess = field(init=False)
    started_pids: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.broker = MosquittoBroker(self.broker_dir, port=self.broker_port,
                                      config_file=self.broker_dir / "mosquitto.conf",
                                      die_with_parent=True)
        self.gateway = GatewayProcess(self.gateway_config, self.gateway_url,
                                      self.workdir / "logs" / "gateway.log")

    @property
    def fleet_dir(self) -> Path:
        return self.workdir / "fleet"

    @property
    def broker_dir(self) -> Path:
        return self.workdir / "broker"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def broker_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.broker_port}"

    @property
    def fleet_config(self) -> Path:
        return self.fleet_dir / fleet_files.FLEET_FILE

    @property
    def gateway_config(self) -> Path:
        return self.fleet_dir / fleet_files.GATEWAY_CONFIG

    @property
    def verifier_key(self) -> str:
        return fleet_files.load_fleet(self.fleet_dir).gateway_verifier_key

    # --- start ----------------------------------------------------------------------------

    def start(self) -> None:
        """Create the fleet, start the broker and the gateway; return once both serve.

        Raises StackError (or Interrupted when ``should_stop()`` turns true).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.provision("init", "--fleet", str(self.fleet_dir), "--broker", self.broker_url,
                       "--gateway", self.gateway_url, "--name", self.name,
                       "--owner", self.owner, "--rate", str(self.rate_micro_per_hour))
        self._configure_broker()
        self.start_broker()
        # As an operator would (OPERATIONS.md §2.4): tell the fleet how to reload the broker,
        # so every device change reaches it.
        self._set_fleet_option("pid_file", str(self.broker_dir / "mosquitto.pid"))
        self._tune_gateway_config()
        self.start_gateway()

    def provision(self, *argv: str) -> str:
        """Run one ``edgeproof-provision`` command; return its stdout. Raises StackError."""
        self.check_stop()
        return run_provision(argv)

    def check_stop(self) -> None:
        """Raise Interrupted if the user asked to stop."""
        if self.should_stop():
            raise Interrupted("interrupted")

    def _configure_broker(self) -> None:
        data = self.broker_dir / "data"
        self.provision("broker-config", "--fleet", str(self.fleet_dir), "--out",
                       str(self.broker_dir), "--bind", "127.0.0.1", "--port",
                       str(self.broker_port), "--data-dir", str(data),
                       "--run-as", getpass.getuser(), *self.broker_args(self.workdir))
        data.mkdir(parents=True, exist_ok=True)

    def start_broker(self, config_file: Path | None = None) -> None:
        """Start Mosquitto (with ``config_file``, default the generated one) and write its pid
        file, through which ``edgeproof-provision`` reloads it. Raises StackError."""
        self.broker.config_file = config_file or self.broker_dir / "mosquitto.conf"
        try:
            self.broker.start()
        except RuntimeError as exc:
            raise StackError(f"mosquitto: {exc}") from None
        assert self.broker.process is not None
        self.started_pids["broker"] = self.broker.process.pid
        pid_file = self.broker_dir / "mosquitto.pid"
        pid_file.write_text(f"{self.broker.process.pid}\n", encoding="ascii")

    def _set_fleet_option(self, key: str, value: str) -> None:
        path = self.fleet_config
        lines = path.read_text(encoding="utf-8").splitlines()
        if not any(line.startswith(f"{key} =") for line in lines):
            raise StackError(f"{path}: no {key} line to set")
        out = [f"{key} = {json.dumps(value)}" if line.startswith(f"{key} =") else line
               for line in lines]
        path.write_text("\n".join(out) + "\n", encoding="utf-8")

    def _tune_gateway_config(self) -> None:
        """Checkpoint every few seconds, so a record is provable soon after it is logged."""
        path = self.gateway_config
        text = path.read_text(encoding="utf-8")
        if "checkpoints" in tomllib.loads(text):
            return
        path.write_text(text.rstrip("\n") + "\n\n[checkpoints]\n"
                        f"interval_s = {self.checkpoint_interval_s}\n"
                        f"every_leaves = {self.every_leaves}\n", encoding="utf-8")

    def start_gateway(self) -> None:
        """Start (or restart) the gateway; return once it is healthy. Raises StackError."""
        try:
            self.gateway.start(check=self.check_stop)
        except StartError as exc:
            raise StackError(str(exc)) from None
        assert self.gateway.pid is not None
        self.started_pids["gateway"] = self.gateway.pid

    # --- recipients and devices -------------------------------------------------------------

    def add_recipient(self, name: str) -> Path:
        """Create a data recipient; return its secret key file."""
        self.provision("recipient", "add", name, "--fleet", str(self.fleet_dir), "--json")
        return self.fleet_dir / fleet_files.RECIPIENTS_DIR / f"{name}.key"

    def add_devices(self, prefix: str, count: int, recipients: Sequence[str] = (),
                    owner_key: str | None = None) -> list[SimDevice]:
        """Provision ``prefix-001`` .. ``prefix-<count>`` and wait until the broker knows them.

        ``owner_key``: the owner's public line to pin (as :meth:`add_device`). Returns the
        devices. Raises StackError.
        """
        argv = ["device", "add", prefix, "--count", str(count), "--fleet", str(self.fleet_dir),
                "--json"]
        for name in recipients:
            argv += ["--recipient", name]
        return self._device_add(argv + _owner_flag(owner_key))

    def add_device(self, name: str, recipients: Sequence[str] = (),
                   owner_key: str | None = None) -> SimDevice:
        """Provision one device called ``name``; return it once the broker knows it.

        ``owner_key`` is the owner's public line (``edgeproof-owner show``) to pin.
        Raises StackError.
        """
        argv = ["device", "add", name, "--fleet", str(self.fleet_dir), "--json"]
        for recipient in recipients:
            argv += ["--recipient", recipient]
        return self._device_add(argv + _owner_flag(owner_key))[0]

    def _device_add(self, argv: list[str]) -> list[SimDevice]:
        made = json.loads(self.provision(*argv))
        devices = [SimDevice(d["name"], d["device_id"], Path(d["bundle"])) for d in made]
        if devices:
            self.wait_for_login(devices[-1])
        return devices

    def wait_for_login(self, device: SimDevice) -> None:
        """Return once the broker accepts ``device``'s credential (it reloads asynchronously).

        Raises StackError if it still refuses after LOGIN_TIMEOUT_S.
        """
        self.wait_for_user(device.device_id, device.password, f"{device.name}'s credential")

    def wait_for_user(self, username: str, password: str, what: str) -> None:
        """Return once the broker accepts this login (it reloads asynchronously after a
        change). Raises StackError naming ``what`` if it still refuses after LOGIN_TIMEOUT_S.
        """
        deadline = time.monotonic() + LOGIN_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            self.check_stop()
            try:
                fleet_mqtt.check_login("127.0.0.1", self.broker_port, username, password,
                                       timeout_s=2.0)
            except (RejectedByPeer, TransportError) as exc:
                last = str(exc)
            else:
                return
            time.sleep(0.1)
        raise StackError(f"the broker does not accept {what}: {last}")

    # --- gateway API -------------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> Any:
        """GET a public gateway endpoint; return its JSON. Raises StackError."""
        try:
            response = requests.get(f"{self.gateway_url}{path}", params=params, timeout=5)
        except requests.RequestException as exc:
            raise StackError(f"gateway {path}: {exc.__class__.__name__}") from None
        if response.status_code != 200:
            raise StackError(f"gateway {path}: HTTP {response.status_code}")
        return response.json()

    def stats(self) -> dict[str, Any]:
        """The gateway's counters (``GET /v1/stats``). Raises StackError."""
        data = self.get("/v1/stats")
        if not isinstance(data, dict):
            raise StackError("gateway /v1/stats: not a JSON object")
        return data

    # --- stop --------------------------------------------------------------------------------

    def pids(self) -> dict[str, int]:
        """The process ids of the broker and the gateway, as started (also after close)."""
        return dict(self.started_pids)

    def close(self) -> None:
        """Stop the gateway (it signs a final checkpoint), then the broker. Idempotent."""
        self.gateway.stop(timeout_s=20)
        self.broker.stop()


def _owner_flag(owner_key: str | None) -> list[str]:
    return [] if owner_key is None else ["--owner-key", owner_key]
