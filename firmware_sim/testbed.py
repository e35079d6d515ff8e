"""A whole edgeproof deployment in a temporary directory, for fault tests and benchmarks.

:class:`Testbed` provisions a fleet through the real operator path (``edgeproof-provision
init``, ``broker-config``, ``device add``: HTTP registration at the gateway, per-device
broker passwords and ACL), then runs every part as its own process:

- Mosquitto with the generated, locked-down config (:class:`~firmware_sim.broker.MosquittoBroker`);
- the gateway, ``python -m gateway.cli run --config <fleet's gateway.toml>``;
- N agents, ``python -m agent.cli run --config FILE --simulate`` (or, for agents whose wall
  clock a test steps, :mod:`firmware_sim.testbed_agent`), each connected to the broker
  through its own :class:`~firmware_sim.netproxy.NetProxy` so its network can be cut.

Each component can be killed with SIGKILL, stopped and started again; the broker can come
back with or without its persistence. Nothing here asserts: the invariants are checked
from the outside by :mod:`firmware_sim.invariants`.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import secrets
import shutil
import signal
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from firmware_sim.broker import MosquittoBroker, free_port
from firmware_sim.fleet_mqtt import check_login
from firmware_sim.netproxy import NetProxy
from firmware_sim.procs import Child, spawn
from firmware_sim.stack import StackError, run_provision
from firmware_sim.testbed_agent import write_clock_file
from protocol.errors import RejectedByPeer, TransportError
from provisioning.broker import add_gateway_user
from provisioning.fleet import changing, load_fleet

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 30.0
OBSERVER_USER = "observer"  # a gateway-rights broker user for wire observers (tests, benches)
TomlValue = str | int | float | bool | Sequence[str | int | float | bool]


@dataclass(frozen=True)
class SensorSpec:
    """One ``[[sensors]]`` table of a testbed agent."""

    kind: str
    stream: str
    interval_s: float
    pin: int | None = None


# Every simulated sensor, fast enough that a few seconds of a fault matter.
FAST_SENSORS = (
    SensorSpec("cpu_temp", "cpu", 0.25),
    SensorSpec("motion", "presence", 0.25, pin=27),
    SensorSpec("power_sense", "tv", 1.0, pin=17),
    SensorSpec("dht22", "climate", 2.5, pin=4),
)
# Quick retries so that a test does not wait out production back-offs.
FAST_UPLINK: Mapping[str, TomlValue] = {
    "batch_interval_s": 0.5, "receipt_timeout_s": 3.0, "backoff_min_s": 0.2,
    "backoff_max_s": 2.0}


@dataclass(frozen=True)
class AgentSpec:
    """How one testbed agent is configured (everything else comes from its bundle)."""

    name: str
    sensors: tuple[SensorSpec, ...] = FAST_SENSORS
    uplink: Mapping[str, TomlValue] = field(default_factory=lambda: dict(FAST_UPLINK))
    outbox_max_bytes: int = 64 * 1024 * 1024
    full_policy: str = "drop-oldest"
    commit_window_s: float = 0.5
    final_flush_s: float = 20.0
    shiftable_clock: bool = True  # run through firmware_sim.testbed_agent
    usage_report_s: float = 5.0


def toml_document(tables: Mapping[str, Mapping[str, TomlValue]],
                  arrays: Mapping[str, Sequence[Mapping[str, TomlValue]]] = {}) -> str:
    """Render flat tables and arrays of tables as TOML (JSON strings are TOML strings)."""
    def value(v: TomlValue) -> str:
        if isinstance(v, str | bool | int | float):
            return json.dumps(v)
        return "[" + ", ".join(json.dumps(x) for x in v) + "]"
    out = []
    for name, table in tables.items():
        out.append(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in table.items()))
    for name, items in arrays.items():
        for table in items:
            out.append(f"[[{name}]]\n" + "".join(f"{k} = {value(v)}\n"
                                                 for k, v in table.items()))
    return "\n".join(out)


def provision(*argv: str) -> str:
    """Run ``edgeproof-provision`` in this process; return its stdout (raises StackError)."""
    return run_provision(argv)


def wait_for_login(port: int, username: str, password: str, timeout_s: float = 10.0) -> None:
    """Return once the broker accepts this login (it re-reads its files asynchronously after
    ``device add``). Raises StackError if it still refuses after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check_login("127.0.0.1", port, username, password, timeout_s=2.0)
            return
        except (RejectedByPeer, TransportError) as exc:
            if time.monotonic() > deadline:
                raise StackError(f"the broker does not accept {username}: {exc}") from None
        time.sleep(0.1)


class Process:
    """One child process (its own process group, ended if this process dies; see
    :mod:`firmware_sim.procs`) that can be started again: start, SIGKILL, SIGTERM."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.child: Child | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.alive()

    def spawn(self) -> None:
        self.child = spawn(self.name, self.argv, self.log)
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL and reap (nothing is flushed, nothing is closed)."""
        if self.child is not None:
            self.child.signal(signal.SIGKILL)
            self.child.process.wait(timeout=10)
            self.child = None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s`` (then SIGKILL); return the exit code."""
        if self.child is None:
            return None
        child, self.child = self.child, None
        return child.stop(timeout_s)

    def send(self, sig: int) -> None:
        if self.child is not None:
            self.child.signal(sig)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class GatewayProcess(Process):
    """The gateway; :meth:`start` returns once ``/healthz`` says it is ready."""

    def __init__(self, config: Path, url: str, log: Path) -> None:
        super().__init__("gateway", [sys.executable, "-m", "gateway.cli", "run", "--config",
                                     str(config)], log)
        self.url = url

    def start(self) -> None:
        """Start and wait until healthy; raise StackError with the log tail if it fails."""
        self.spawn()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.running:
                raise StackError(f"gateway exited at start: {self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise StackError(f"gateway not healthy within {START_TIMEOUT_S} s: {self.tail()}")


class AgentProcess(Process):
    """One agent installed from its provisioning bundle into ``root``."""

    def __init__(self, spec: AgentSpec, root: Path, device_id: str, proxy: NetProxy) -> None:
        self.spec, self.root, self.device_id, self.proxy = spec, root, device_id, proxy
        self.state_dir = root / "state"
        self.config = root / "agent.toml"
        self.clock_file = root / "clock.json"
        args = ["--config", str(self.config), "--simulate", "--state-dir", str(self.state_dir)]
        if spec.shiftable_clock:
            argv = [sys.executable, "-m", "firmware_sim.testbed_agent", "--clock-file",
                    str(self.clock_file), "--", *args]
        else:
            argv = [sys.executable, "-m", "agent.cli", "run", *args]
        super().__init__(spec.name, argv, root / "agent.log")

    @property
    def outbox(self) -> Path:
        return self.state_dir / "outbox.sqlite"

    def start(self) -> None:
        self.spawn()

    def jump_clock(self, offset_ms: int, synced: bool | None) -> None:
        """Step the agent's wall clock to true time + ``offset_ms`` (needs shiftable_clock)."""
        if not self.spec.shiftable_clock:
            raise StackError(f"agent {self.spec.name} runs without a shiftable clock")
        write_clock_file(self.clock_file, offset_ms, synced)
        self.send(signal.SIGUSR1)


@dataclass(frozen=True)
class DeviceCredentials:
    """What the fleet made for one device: its id, key file and broker login."""

    name: str
    device_id: str
    key_file: Path
    username: str
    password: str


class Testbed:
    """Broker, gateway and agents of one provisioned fleet under ``workdir``."""

    __test__ = False  # not a pytest class

    def __init__(self, workdir: Path, agents: Sequence[AgentSpec] = (), *,
                 checkpoint_interval_s: float = 1.0, every_leaves: int = 1000,
                 rate_micro_per_hour: int = 3_600_000) -> None:
        self.workdir = workdir
        self.specs = list(agents)
        self.fleet = workdir / "fleet"
        self.broker_dir = workdir / "broker"
        self.broker_port, self.http_port = free_port(), free_port()
        self.gateway_url = f"http://127.0.0.1:{self.http_port}"
        self.checkpoint_interval_s, self.every_leaves = checkpoint_interval_s, every_leaves
        self.rate = rate_micro_per_hour
        self.broker = MosquittoBroker(self.broker_dir, port=self.broker_port)
        self.gateway = GatewayProcess(self.fleet / "gateway/etc/edgeproof/gateway.toml",
                                      self.gateway_url, workdir / "gateway.log")
        self.agents: dict[str, AgentProcess] = {}
        self._proxies: list[NetProxy] = []
        self._observer_login: tuple[str, str] | None = None

    # --- setting up ------------------------------------------------------------------------

    def start(self) -> Testbed:
        """Provision the fleet, start broker and gateway, add and start every agent."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        provision("init", str(self.fleet), "--broker", f"mqtt://127.0.0.1:{self.broker_port}",
                  "--gateway", self.gateway_url, "--name", "testbed.local/edgeproof",
                  "--owner", "testbed", "--rate", str(self.rate))
        provision("broker-config", "--fleet", str(self.fleet), "--out", str(self.broker_dir),
                  "--bind", "127.0.0.1", "--data-dir", str(self.broker_dir / "data"),
                  "--run-as", getpass.getuser())
        (self.broker_dir / "data").mkdir(exist_ok=True)
        self.broker.config_file = self.broker_dir / "mosquitto.conf"
        self.start_broker()
        self._set_fleet_option("pid_file", str(self.broker_dir / "mosquitto.pid"))
        with (self.fleet / "gateway/etc/edgeproof/gateway.toml").open("a") as f:
            f.write(f"\n[checkpoints]\ninterval_s = {self.checkpoint_interval_s}\n"
                    f"every_leaves = {self.every_leaves}\n")
        self.gateway.start()
        for spec in self.specs:
            self.add_agent(spec).start()
        return self

    def add_device(self, name: str) -> DeviceCredentials:
        """Provision one device (``device add``); return its credentials."""
        out = json.loads(provision("device", "add", name, "--fleet", str(self.fleet), "--json"))
        device_id = out[0]["device_id"]
        bundle = self.fleet / "devices" / name
        password = (bundle / "etc/edgeproof/broker.password").read_text().strip()
        wait_for_login(self.broker_port, device_id, password)
        return DeviceCredentials(name, device_id, bundle / "var/lib/edgeproof/device.key",
                                 device_id, password)

    def add_agent(self, spec: AgentSpec) -> AgentProcess:
        """Provision a device for ``spec`` and install its agent (not started)."""
        creds = self.add_device(spec.name)
        root = self.workdir / "agents" / spec.name
        bundle = self.fleet / "devices" / spec.name
        (root / "state").mkdir(parents=True, mode=0o700)
        shutil.copy2(bundle / "var/lib/edgeproof/device.key", root / "state/device.key")
        shutil.copy2(bundle / "etc/edgeproof/broker.password", root / "broker.password")
        proxy = NetProxy(self.broker_port).start()
        self._proxies.append(proxy)
        agent = AgentProcess(spec, root, creds.device_id, proxy)
        agent.config.write_text(self._agent_toml(spec, bundle, agent))
        write_clock_file(agent.clock_file, 0, None)
        self.agents[spec.name] = agent
        return agent

    def _agent_toml(self, spec: AgentSpec, bundle: Path, agent: AgentProcess) -> str:
        base = tomllib.loads((bundle / "etc/edgeproof/agent.toml").read_text())
        sensors: list[dict[str, TomlValue]] = [
            {"kind": s.kind, "stream": s.stream, "interval_s": s.interval_s,
             **({"pin": s.pin} if s.pin is not None else {})} for s in spec.sensors]
        usage = {**base["usage"], "checkpoint_interval_s": 1.0,
                 "report_interval_s": spec.usage_report_s}
        return toml_document(self._tables(spec, base, agent, sensors, usage),
                             {"sensors": sensors})

    def _tables(self, spec: AgentSpec, base: dict[str, dict[str, TomlValue]],
                agent: AgentProcess, sensors: list[dict[str, TomlValue]],
                usage: dict[str, TomlValue]) -> dict[str, Mapping[str, TomlValue]]:
        tables: dict[str, Mapping[str, TomlValue]] = {
            "agent": {"state_dir": str(agent.state_dir), "log_level": "info"},
            "gateway": base["gateway"],
            "mqtt": {"broker": agent.proxy.url, "username": base["mqtt"]["username"],
                     "password_file": str(agent.root / "broker.password")},
            "uplink": spec.uplink,
            "outbox": {"max_bytes": spec.outbox_max_bytes, "full_policy": spec.full_policy,
                       "commit_window_s": spec.commit_window_s},
            "service": {"final_flush_s": spec.final_flush_s, "status_interval_s": 1.0},
        }
        if any(s["stream"] == usage["input"] for s in sensors):
            tables["usage"] = usage
        return tables

    def _set_fleet_option(self, key: str, value: str) -> None:
        path = self.fleet / "fleet.toml"
        lines = [f"{key} = {json.dumps(value)}" if line.startswith(f"{key} =") else line
                 for line in path.read_text().splitlines()]
        path.write_text("\n".join(lines) + "\n")

    # --- the broker ------------------------------------------------------------------------

    def start_broker(self, *, persistence: bool = True) -> None:
        """Start Mosquitto on its port; without persistence its saved state is wiped first."""
        conf = self.broker_dir / "mosquitto.conf"
        if not persistence:
            text = conf.read_text().replace("persistence true", "persistence false")
            conf = self.broker_dir / "mosquitto-nopersist.conf"
            conf.write_text(text)
            shutil.rmtree(self.broker_dir / "data", ignore_errors=True)
            (self.broker_dir / "data").mkdir()
        self.broker.config_file = conf
        self.broker.start()
        assert self.broker.process is not None
        (self.broker_dir / "mosquitto.pid").write_text(f"{self.broker.process.pid}\n")

    def restart_broker(self, *, kill: bool = True, persistence: bool = True,
                       down_s: float = 0.0) -> None:
        """Kill (or stop) the broker, wait ``down_s``, start it again on the same port."""
        if kill:
            self.broker.kill()
        else:
            self.broker.stop()
        time.sleep(down_s)
        self.start_broker(persistence=persistence)

    # --- the network -------------------------------------------------------------------------

    def cut(self, names: Sequence[str] | None = None, mode: str = "reset") -> None:
        """Cut the named agents' (default: every agent's) link to the broker."""
        for agent in self._select(names):
            agent.proxy.cut(mode)  # type: ignore[arg-type]

    def restore(self, names: Sequence[str] | None = None) -> None:
        for agent in self._select(names):
            agent.proxy.restore()

    def _select(self, names: Sequence[str] | None) -> list[AgentProcess]:
        return list(self.agents.values()) if names is None else [self.agents[n] for n in names]

    # --- reading from the outside -----------------------------------------------------------

    def verifier_key(self) -> str:
        return str(httpx.get(f"{self.gateway_url}/v1/verifier-key", timeout=10).text).strip()

    def stats(self) -> dict[str, object]:
        data: dict[str, object] = httpx.get(f"{self.gateway_url}/v1/stats", timeout=10).json()
        return data

    def observer_broker_login(self) -> tuple[str, str]:
        """A broker user and password of its own with the gateway's rights (it may read every
        records topic), made on first use. Not the gateway's own login: the broker makes the
        user name the client id, so sharing it would close the gateway's connection."""
        if self._observer_login is None:
            password = secrets.token_urlsafe(18)
            cfg = load_fleet(self.fleet)
            with changing(cfg):
                add_gateway_user(cfg, OBSERVER_USER, password)
            wait_for_login(self.broker_port, OBSERVER_USER, password)
            self._observer_login = (OBSERVER_USER, password)
        return self._observer_login

    @property
    def gateway_db(self) -> Path:
        return self.fleet / "gateway/var/lib/edgeproof/gateway/gateway.sqlite"

    # --- shutting down ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this testbed started (agents, gateway, broker, proxies)."""
        for agent in self.agents.values():
            agent.stop(timeout_s=10)
        self.gateway.stop(timeout_s=20)
        self.broker.kill()
        for proxy in self._proxies:
            proxy.close()

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
