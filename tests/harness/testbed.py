"""A whole edgeproof deployment in a temporary directory, for fault tests and benchmarks.

:class:`Testbed` is the demo's private installation (:class:`firmware_sim.stack.Stack`: a
fleet made through the real operator path, ``edgeproof-provision init``, ``broker-config``,
``device add`` with HTTP registration at the gateway, per-device broker passwords and ACL)
plus agents and the controls a fault test needs. Every part runs as its own process:

- Mosquitto with the generated, locked-down config (:class:`~firmware_sim.broker.MosquittoBroker`);
- the gateway (:class:`~firmware_sim.procs.GatewayProcess`), restartable;
- N agents, ``python -m agent.cli run --config FILE --simulate`` (or, for agents whose wall
  clock a test steps, :mod:`tests.harness.testbed_agent`), each connected to the broker
  through its own :class:`~tests.harness.netproxy.NetProxy` so its network can be cut.

Each component can be killed with SIGKILL, stopped and started again; the broker can come
back with or without its persistence. Nothing here asserts: the invariants are checked
from the outside by :mod:`tests.harness.invariants`.
"""

from __future__ import annotations

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
from typing import Any

from firmware_sim.broker import MosquittoBroker
from firmware_sim.procs import GatewayProcess, Process
from firmware_sim.stack import SimDevice, Stack, StackError
from protocol.keys import OwnerKey, OwnerPublic
from provisioning.broker import add_gateway_user
from provisioning.fleet import changing, load_fleet
from tests.harness.netproxy import CutMode, NetProxy
from tests.harness.testbed_agent import write_clock_file

REPO = Path(__file__).resolve().parents[2]

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
    shiftable_clock: bool = True  # run through tests.harness.testbed_agent
    usage_report_s: float = 5.0
    owner: OwnerKey | None = None  # pinned at enrolment (device add --owner-key)
    recipients: tuple[str, ...] = ()  # device add --recipient (the operator's choice)
    clock_synced: bool | None = None  # the wall clock's sync state (None: the kernel's)


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


class AgentProcess(Process):
    """One agent installed from its provisioning bundle into ``root``."""

    def __init__(self, spec: AgentSpec, root: Path, device_id: str, proxy: NetProxy) -> None:
        self.spec, self.root, self.device_id, self.proxy = spec, root, device_id, proxy
        self.state_dir = root / "state"
        self.config = root / "agent.toml"
        self.clock_file = root / "clock.json"
        args = ["--config", str(self.config), "--simulate", "--state-dir", str(self.state_dir)]
        if spec.shiftable_clock:
            argv = [sys.executable, "-m", "tests.harness.testbed_agent", "--clock-file",
                    str(self.clock_file), "--", *args]
        else:
            argv = [sys.executable, "-m", "agent.cli", "run", *args]
        super().__init__(spec.name, argv, root / "agent.log", cwd=REPO)

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


class Testbed:
    """Broker, gateway and agents of one provisioned fleet under ``workdir``."""

    __test__ = False  # not a pytest class

    def __init__(self, workdir: Path, agents: Sequence[AgentSpec] = (), *,
                 checkpoint_interval_s: float = 1.0, every_leaves: int = 1000,
                 rate_micro_per_hour: int = 3_600_000) -> None:
        self.workdir = workdir
        self.specs = list(agents)
        self.rate = rate_micro_per_hour
        self.stack = Stack(workdir, owner="testbed", name="testbed.local/edgeproof",
                           rate_micro_per_hour=rate_micro_per_hour,
                           checkpoint_interval_s=checkpoint_interval_s,
                           every_leaves=every_leaves)
        self.agents: dict[str, AgentProcess] = {}
        self._proxies: list[NetProxy] = []
        self._observer_login: tuple[str, str] | None = None

    @property
    def fleet(self) -> Path:
        return self.stack.fleet_dir

    @property
    def broker_dir(self) -> Path:
        return self.stack.broker_dir

    @property
    def broker_port(self) -> int:
        return self.stack.broker_port

    @property
    def gateway_url(self) -> str:
        return self.stack.gateway_url

    @property
    def broker(self) -> MosquittoBroker:
        return self.stack.broker

    @property
    def gateway(self) -> GatewayProcess:
        return self.stack.gateway

    # --- setting up ------------------------------------------------------------------------

    def start(self) -> Testbed:
        """Provision the fleet, start broker and gateway, add and start every agent."""
        self.stack.start()
        for spec in self.specs:
            self.add_agent(spec).start()
        return self

    def add_device(self, name: str, owner: OwnerKey | None = None,
                   recipients: Sequence[str] = ()) -> SimDevice:
        """Provision one device (``device add``, pinning ``owner``'s keys if given, with the
        operator's ``recipients``); return it once the broker accepts it."""
        pinned = None if owner is None else OwnerPublic.of(owner).text()
        return self.stack.add_device(name, recipients, owner_key=pinned)

    def add_agent(self, spec: AgentSpec) -> AgentProcess:
        """Provision a device for ``spec`` and install its agent (not started)."""
        device = self.add_device(spec.name, spec.owner, spec.recipients)
        root = self.workdir / "agents" / spec.name
        (root / "state").mkdir(parents=True, mode=0o700)
        shutil.copy2(device.key_file, root / "state/device.key")
        shutil.copy2(device.password_file, root / "broker.password")
        proxy = NetProxy(self.broker_port).start()
        self._proxies.append(proxy)
        agent = AgentProcess(spec, root, device.device_id, proxy)
        agent.config.write_text(self._agent_toml(spec, device.config, agent))
        write_clock_file(agent.clock_file, 0, spec.clock_synced)
        self.agents[spec.name] = agent
        return agent

    def _agent_toml(self, spec: AgentSpec, bundle_config: Path, agent: AgentProcess) -> str:
        base = tomllib.loads(bundle_config.read_text())
        sensors: list[dict[str, TomlValue]] = [
            {"kind": s.kind, "stream": s.stream, "interval_s": s.interval_s,
             **({"pin": s.pin} if s.pin is not None else {}),
             **({"recipients": list(spec.recipients)} if spec.recipients else {})}
            for s in spec.sensors]
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
        if "owner" in base:  # pinned at enrolment
            tables["owner"] = base["owner"]
        if spec.recipients:
            tables["recipients"] = base["recipients"]
        return tables

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
        self.stack.start_broker(conf)

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

    def cut(self, names: Sequence[str] | None = None, mode: CutMode = "reset") -> None:
        """Cut the named agents' (default: every agent's) link to the broker."""
        for agent in self._select(names):
            agent.proxy.cut(mode)

    def restore(self, names: Sequence[str] | None = None) -> None:
        for agent in self._select(names):
            agent.proxy.restore()

    def _select(self, names: Sequence[str] | None) -> list[AgentProcess]:
        return list(self.agents.values()) if names is None else [self.agents[n] for n in names]

    # --- reading from the outside -----------------------------------------------------------

    def verifier_key(self) -> str:
        return self.stack.verifier_key

    def stats(self) -> dict[str, Any]:
        return self.stack.stats()

    def observer_broker_login(self) -> tuple[str, str]:
        """A broker user and password of its own with the gateway's rights (it may read every
        records topic), made on first use. Not the gateway's own login: the broker makes the
        user name the client id, so sharing it would close the gateway's connection."""
        if self._observer_login is None:
            self._observer_login = self.gateway_rights_login(OBSERVER_USER)
        return self._observer_login

    def gateway_rights_login(self, user: str) -> tuple[str, str]:
        """Make a broker user ``user`` with the gateway's rights (read every records and
        policy-sync topic, write every receipts and policy topic); return its login."""
        password = secrets.token_urlsafe(18)
        cfg = load_fleet(self.fleet)
        with changing(cfg):
            add_gateway_user(cfg, user, password)
        self.stack.wait_for_user(user, password, f"the {user} login")
        return user, password

    @property
    def gateway_db(self) -> Path:
        return self.fleet / "gateway/var/lib/edgeproof/gateway/gateway.sqlite"

    # --- shutting down ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this testbed started (agents, gateway, broker, proxies)."""
        for agent in self.agents.values():
            agent.stop(timeout_s=10)
        self.stack.gateway.stop(timeout_s=20)
        self.stack.broker.kill()
        for proxy in self._proxies:
            proxy.close()

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
