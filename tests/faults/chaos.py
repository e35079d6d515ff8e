"""Seeded fault injection against a :class:`tests.harness.testbed.Testbed`.

:class:`Chaos` applies one fault at a time at a random (seeded) moment, lets the system
run under it for a random while, and undoes it: ``kill -9`` of an agent, the gateway or
the broker; the broker restarted without its persistence (every queued message and
session forgotten); an agent's network cut (connections reset) or blackholed (packets
vanish); an agent's wall clock stepped backwards or forwards (as a Pi's is after a power
cut, until NTP); an outbox filled to its cap while its network is down; and a device's
already-sent records published again, shuffled, with its own broker credentials.

Between faults it polls the latest checkpoint so that :func:`settle_and_check` can prove
that no checkpoint the gateway ever showed was forked or forgotten.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol.batch import Batch, records_topic
from tests.harness.invariants import (
    LogView,
    OutboxView,
    Report,
    WireObserver,
    check_checkpoints,
    check_device,
    check_log,
)
from tests.harness.testbed import AgentProcess, AgentSpec, SensorSpec, Testbed

FAULT_KINDS = ("kill_agent", "kill_gateway", "kill_broker", "broker_no_persistence",
               "net_cut", "net_blackhole", "clock_jump", "outbox_cap", "duplicate_reorder")
DAY_MS = 86_400_000
# Two agents whose outbox is tiny and whose sensors are fast: a short outage fills them.
CAP_SENSORS = (SensorSpec("cpu_temp", "cpu", 0.02), SensorSpec("motion", "presence", 0.05,
                                                                 pin=27))
CAP_BYTES = 64 * 1024


def fault_agents() -> list[AgentSpec]:
    """The fleet of the fault runs: one agent through the real CLI, one with a shiftable
    clock, and two with capped outboxes (one per full policy)."""
    return [AgentSpec("plain", shiftable_clock=False), AgentSpec("clocked"),
            AgentSpec("capped-drop", sensors=CAP_SENSORS, outbox_max_bytes=CAP_BYTES),
            AgentSpec("capped-reject", sensors=CAP_SENSORS, outbox_max_bytes=CAP_BYTES,
                      full_policy="reject-new")]


@dataclass
class Chaos:
    """Injects faults into ``tb``; everything random comes from ``rng``."""

    tb: Testbed
    rng: random.Random
    log: Callable[[str], None] = print
    done: Counter[str] = field(default_factory=Counter)
    notes: set[str] = field(default_factory=set)
    jumps: list[tuple[str, int]] = field(default_factory=list)  # (device id, offset ms)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_checkpoints, daemon=True)
        self._poller.start()
        self._batch = 0xFFFF_0000

    def run(self, count: int, kinds: tuple[str, ...] = FAULT_KINDS,
            on_every: tuple[int, Callable[[], None]] | None = None) -> None:
        """Inject ``count`` faults: every kind once per round, rounds shuffled."""
        order: list[str] = []
        while len(order) < count:
            round_ = list(kinds)
            self.rng.shuffle(round_)
            order += round_
        for n, kind in enumerate(order[:count], 1):
            time.sleep(self.rng.uniform(0.2, 1.5))  # a random moment of normal running
            started = time.monotonic()
            what = getattr(self, f"_{kind}")()
            self.done[kind] += 1
            self.log(f"fault {n}/{count} {kind}: {what} ({time.monotonic() - started:.1f} s)")
            if on_every and n % on_every[0] == 0:
                on_every[1]()

    def close(self) -> None:
        self._stop.set()
        self._poller.join(timeout=5)

    # --- the faults ------------------------------------------------------------------------

    def _agent(self, *, clocked: bool = False) -> AgentProcess:
        agents = [a for a in self.tb.agents.values() if a.spec.shiftable_clock or not clocked]
        return self.rng.choice(sorted(agents, key=lambda a: a.spec.name))

    def _kill_agent(self) -> str:
        agent = self._agent()
        agent.kill()
        time.sleep(self.rng.uniform(0.1, 1.5))
        agent.start()
        return agent.spec.name

    def _kill_gateway(self) -> str:
        self.tb.gateway.kill()
        time.sleep(self.rng.uniform(0.1, 2.0))
        self.tb.gateway.start()
        return "restarted"

    def _kill_broker(self) -> str:
        down = self.rng.uniform(0.1, 2.0)
        self.tb.restart_broker(kill=True, persistence=True, down_s=down)
        return f"down {down:.1f} s"

    def _broker_no_persistence(self) -> str:
        down = self.rng.uniform(0.1, 1.0)
        self.tb.restart_broker(kill=self.rng.random() < 0.5, persistence=False, down_s=down)
        self._run_for(0.5, 2.0)
        self.tb.restart_broker(kill=False, persistence=True)  # back to the real config
        return f"down {down:.1f} s, sessions and queues forgotten"

    def _net_cut(self) -> str:
        return self._net("reset")

    def _net_blackhole(self) -> str:
        return self._net("blackhole")

    def _net(self, mode: str) -> str:
        names = sorted(self.tb.agents)
        chosen = names if self.rng.random() < 0.4 else [self.rng.choice(names)]
        self.tb.cut(chosen, mode)
        took = self._run_for(0.5, 4.0)
        self.tb.restore(chosen)
        return f"{','.join(chosen)} for {took:.1f} s"

    def _clock_jump(self) -> str:
        agent = self._agent(clocked=True)
        offset = (-self.rng.randint(60_000, DAY_MS) if self.rng.random() < 0.6
                  else self.rng.randint(60_000, DAY_MS // 24))
        agent.jump_clock(offset, synced=False)  # a stepped clock is not synced
        self.jumps.append((agent.device_id, offset))
        took = self._run_for(1.0, 3.0)
        agent.jump_clock(0, synced=None)  # NTP steps it back
        return f"{agent.spec.name} by {offset / 1000:+.0f} s for {took:.1f} s"

    def _outbox_cap(self) -> str:
        agent = self.rng.choice(sorted((a for a in self.tb.agents.values()
                                        if a.spec.outbox_max_bytes <= CAP_BYTES),
                                       key=lambda a: a.spec.name))
        before = _dropped(agent)
        self.tb.cut([agent.spec.name])
        # Until the outbox is full and drops: about half a minute at the sensors' cadence,
        # longer on a loaded machine; the bound is generous, the wait ends at the first drop.
        deadline = time.monotonic() + 120
        while _dropped(agent) <= before and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(self.rng.uniform(0.0, 1.0))
        self.tb.restore([agent.spec.name])
        return f"{agent.spec.name} dropped {_dropped(agent) - before} records"

    def _duplicate_reorder(self) -> str:
        agent = self._agent()
        logged = httpx.get(f"{self.tb.gateway_url}/v1/devices/{agent.device_id}/records",
                           params={"after_seq": max(-1, _head(agent) - 60), "limit": 60},
                           timeout=10).json()["records"]
        raws = [bytes.fromhex(r["record"]) for r in logged]
        with contextlib.suppress(sqlite3.Error):
            view = OutboxView.read(agent.outbox, bytes.fromhex(agent.device_id))
            raws += [raw for _, raw in sorted(view.pending.items())[:20]]
        if not raws:
            return "nothing to replay yet"
        self.rng.shuffle(raws)
        cut = sorted(self.rng.sample(range(1, len(raws) + 1), min(len(raws), 3)))
        batches = [raws[a:b] for a, b in zip([0, *cut], cut, strict=False) if raws[a:b]]
        payloads = []
        for records in batches:
            self._batch += 1
            payloads.append(Batch(self._batch, tuple(records)).to_cbor())
        payloads += self.rng.sample(payloads, len(payloads))  # each batch twice, reordered
        _publish_as(self.tb, agent, payloads)
        return f"{agent.spec.name}: {len(raws)} records in {len(payloads)} batches"

    def _run_for(self, low: float, high: float) -> float:
        took = self.rng.uniform(low, high)
        time.sleep(took)
        return took

    def _poll_checkpoints(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"{self.tb.gateway_url}/v1/checkpoint", timeout=2)
                if response.status_code == 200:
                    self.notes.add(response.text)


def _dropped(agent: AgentProcess) -> int:
    try:
        conn = sqlite3.connect(f"file:{agent.outbox}?mode=ro", uri=True, timeout=10)
        try:
            row = conn.execute("SELECT value FROM meta WHERE name = 'c_dropped'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def _head(agent: AgentProcess) -> int:
    try:
        return OutboxView.read(agent.outbox, b"").head_seq
    except sqlite3.Error:
        return 0


def _publish_as(tb: Testbed, agent: AgentProcess, payloads: list[bytes]) -> None:
    """Publish with the device's own broker login (its ACL allows its records topic)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{agent.device_id}-replay",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(agent.device_id, (agent.root / "broker.password").read_text().strip())
    client.connect("127.0.0.1", tb.broker_port)
    client.loop_start()
    try:
        topic = records_topic(bytes.fromhex(agent.device_id))
        infos = [client.publish(topic, payload, qos=1) for payload in payloads]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def settle(tb: Testbed, log: Callable[[str], None] = print) -> None:
    """Undo every fault, then stop every agent after its final flush (restarting any that
    still hold records, up to three times), so that each outbox is empty."""
    tb.restore()
    for agent in tb.agents.values():
        agent.jump_clock(0, None) if agent.spec.shiftable_clock else None
    if not tb.broker.process:
        tb.start_broker()
    if not tb.gateway.running:
        tb.gateway.start()
    for agent in tb.agents.values():
        if not agent.running:
            agent.start()
    _wait_drained(tb)  # every agent reconnects and sends what it has
    for agent in sorted(tb.agents.values(), key=lambda a: a.spec.name):
        for attempt in range(3):
            code = agent.stop(timeout_s=60)
            view = OutboxView.read(agent.outbox, bytes.fromhex(agent.device_id))
            log(f"stopped {agent.spec.name} (exit {code}): {len(view.pending)} records left")
            if not view.pending or attempt == 2:
                break
            agent.start()
            _wait_drained(tb)


def _wait_drained(tb: Testbed, timeout_s: float = 120.0) -> None:
    """Wait (bounded) until the gateway receipted every record the running agents held when
    called (agents keep reading, so "empty" would rarely hold): a condition, not a fixed
    time, so a slow machine gets the time it needs and a fast one none extra."""
    def pending(agent: AgentProcess) -> list[int]:
        with contextlib.suppress(sqlite3.Error):
            return sorted(OutboxView.read(agent.outbox, bytes.fromhex(agent.device_id)).pending)
        return []
    heads = {name: max(pending(a), default=-1) for name, a in tb.agents.items() if a.running}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(min(pending(tb.agents[name]), default=head + 1) > head
               for name, head in heads.items()):
            return
        time.sleep(0.2)


def check_all(tb: Testbed, observer: WireObserver | None, notes: set[str], *,
              drained: bool) -> Report:
    """Every invariant of tests.harness.invariants over the whole testbed."""
    views = {a.spec.name: OutboxView.read(a.outbox, bytes.fromhex(a.device_id))
             for a in tb.agents.values()}  # outboxes first: the log can only be ahead
    log = LogView.read(tb.gateway_db)
    report = check_log(log)
    for _, view in sorted(views.items()):
        wire = observer.of_device(view.device_id) if observer else None
        report.merge(check_device(log, view, wire, drained=drained))
    report.merge(check_checkpoints(tb.gateway_url, tb.verifier_key(), notes))
    return report
