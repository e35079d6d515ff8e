"""The agent's outbox and uplink in this process, against a real Mosquitto: what the uplink
tests share (tests/agent/test_uplink.py, test_policy_uplink.py and others that need a
device's outbox+uplink rig). The receipt responder fixture is in tests/agent/conftest.py."""

from __future__ import annotations

import random
from pathlib import Path

from agent.clock import Clock, SystemClock
from agent.outbox import DeviceState, Outbox, OutboxSettings
from agent.policy import PolicyInbox
from agent.records import EpochPolicy, RecordFactory, RecordWriter
from agent.uplink import BrokerSettings, GatewayKey, MqttConfig, Uplink, UplinkSettings
from osutil.brokerurl import parse_broker_url
from protocol.keys import Secret, SigningKey, device_id_for
from protocol.record import Measurement

FAST = UplinkSettings(
    batch_max_records=20,
    batch_interval_ms=100,
    receipt_timeout_ms=1500,
    backoff_min_ms=100,
    backoff_max_ms=500,
    poll_ms=20,
)


class OutboxRig:
    """A device's key, state and outbox (small commit windows) with its record factory;
    a subclass makes its uplink with :meth:`make_uplink`."""

    uplink: Uplink

    def __init__(self, tmp: Path, clock: Clock, key: SigningKey | None = None) -> None:
        self.clock = clock
        key = key or SigningKey.generate()
        self.key = key
        self.public_key = key.public_key
        self.device_id = device_id_for(key.public_key)
        self.state = DeviceState.open(tmp / "state.sqlite", self.clock.wall_ms)
        self.outbox = Outbox(
            tmp / "outbox.sqlite",
            OutboxSettings(commit_window_ms=50, commit_max_records=10),
            self.state,
            self.clock,
        )
        self.factory = RecordFactory(self.device_id, key, self.outbox.boot, self.clock)
        self.outbox.attach(self.factory)

    def make_uplink(
        self,
        settings: UplinkSettings,
        broker: BrokerSettings,
        gateway_key: str,
        policy: PolicyInbox | None = None,
    ) -> Uplink:
        return Uplink(
            settings,
            broker,
            GatewayKey.from_text(gateway_key),
            device_id=self.device_id,
            boot=self.outbox.boot,
            outbox=self.outbox,
            clock=self.clock,
            rng=random.Random(7),
            policy=policy,
        )

    def depth(self) -> int:
        return self.outbox.stats().depth

    def close(self) -> None:
        self.uplink.stop()
        self.outbox.close()
        self.state.close()


class Device(OutboxRig):
    """An outbox, a record writer and an uplink in this process."""

    def __init__(
        self,
        tmp: Path,
        broker_url: str,
        gateway_key: str,
        settings: UplinkSettings = FAST,
        username: str | None = None,
        password: str | None = None,
        key: SigningKey | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        super().__init__(tmp, SystemClock(), key)
        self.writer = RecordWriter(
            self.factory, self.outbox, {}, policy=EpochPolicy(), clock=self.clock
        )
        host, port, use_tls = parse_broker_url(broker_url, "broker_url")
        ca, cert, client_key = tls if tls else (None, None, None)
        broker = BrokerSettings(
            MqttConfig(broker_url, host, port, use_tls, ca_file=ca, cert_file=cert,
                       key_file=client_key, username=username),
            password=Secret(password.encode()) if password else None,
            connect_timeout_s=2.0,
        )
        self.uplink = self.make_uplink(settings, broker, gateway_key)

    def write(self, n: int) -> list[int]:
        seqs = []
        for i in range(n):
            seq = self.writer.write_values(
                "cpu", (Measurement(i, -1, "Cel"),), self.clock.mono_ms()
            )
            assert seq is not None
            seqs.append(seq)
        self.outbox.commit()
        return seqs
