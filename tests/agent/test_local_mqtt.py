"""The owner's local broker (Home Assistant): what goes there, what never does, and that it
can neither steer what the device signs nor slow the device down. Real Mosquitto brokers."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main as agent_main
from agent.clock import ManualClock, SystemClock
from agent.local_mqtt import DeviceInfo, LocalPublisher, device_entities
from agent.local_mqtt.payout import PayoutWatcher
from agent.sensors import Reading, load_simulated_hardware
from agent.service import AgentService, ServiceOptions
from agent.status import collect_status
from agent.uplink import BrokerSettings, MqttConfig
from firmware_sim.broker import MosquittoBroker
from protocol.errors import ConfigError
from protocol.keys import OwnerKey, SigningKey, device_id_for, load_device_key
from protocol.payout_notice import PayoutNotice
from protocol.record import Sealed, Values
from tests.agent.mqtt_watch import Watcher
from tests.agent.notice_server import NoticeServer
from tests.agent.responder import RATE, Responder
from tests.agent.test_service import (
    UNREACHABLE,
    config,
    evening,
    outbox_records,
    wait_until,
)
from tests.harness.netproxy import NetProxy

ACME = "d11747279eb85fba5db8e28508676c3d5272ac31b7f4fffd47b95657e032e55b"
SENSORS = [{"kind": "cpu_temp", "stream": "cpu", "interval_s": 1.0},
           {"kind": "dht22", "stream": "climate", "pin": 4, "interval_s": 2.5,
            "recipients": ["acme"]},
           {"kind": "power_sense", "stream": "tv", "pin": 17, "interval_s": 1.0}]
USAGE = {"input": "tv", "rate_micro_per_hour": RATE, "checkpoint_interval_s": 1.0,
         "report_interval_s": 2.0}


def local_config(tmp_path: Path, fleet: str, gateway_key: str, local: str,
                 **sections: Any) -> Any:
    return config(tmp_path, fleet, gateway_key, sensors=SENSORS, usage=USAGE,
                  recipients={"acme": ACME},
                  local_mqtt={"broker": local, "status_interval_s": 1.0}, **sections)


@pytest.fixture
def gateway_key() -> str:
    return Responder("mqtt://127.0.0.1:1").verifier_key


@pytest.fixture
def watcher(broker: MosquittoBroker) -> Iterator[Watcher]:
    w = Watcher(broker.url)
    try:
        yield w
    finally:
        w.stop()


def test_home_assistant_gets_unsealed_readings_credit_and_health_and_nothing_sealed(
        tmp_path: Path, gateway_key: str, broker: MosquittoBroker, watcher: Watcher,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = local_config(tmp_path, UNREACHABLE, gateway_key, broker.url)
    readings: list[Reading] = []
    clock = ManualClock(wall_ms=int(evening() * 1000))
    sim = load_simulated_hardware(1, tmp_path, clock)
    service = AgentService(cfg, clock, sim=sim, options=ServiceOptions(on_reading=readings.append))
    service.start()
    dev = service.identity.device_id.hex()
    node = f"edgeproof_{dev[:16]}"
    avail = f"edgeproof/{dev}/availability"
    try:
        assert watcher.wait_for(lambda seen: seen.get(avail) == b"online")
        for _ in range(5):
            clock.advance(1000)
            service.step()
        cpu = [r for r in readings if r.stream == "cpu"][-1].values[0]
        assert watcher.wait_for(
            lambda seen: seen.get(f"edgeproof/{dev}/cpu_temperature") == str(cpu.value).encode())
    finally:
        service.shutdown()
        sim.close()
    seen = watcher.latest()
    assert seen[avail] == b"offline"  # a clean stop says so before DISCONNECT
    configs = {t.split("/")[1] + "/" + t.split("/")[3] for t in seen if t.endswith("/config")}
    assert configs == {"sensor/cpu_temperature", "binary_sensor/tv", "sensor/credit_accrued",
                       "sensor/credit_settled", "sensor/outbox_depth", "sensor/outbox_bytes",
                       "sensor/outbox_dropped", "sensor/sensor_errors", "binary_sensor/uplink",
                       "binary_sensor/problem"}
    assert not [t for t in watcher.topics() if "climate" in t]  # sealed for acme: never here
    assert all(b"climate" not in p for _, p, _ in watcher.messages)
    temp = json.loads(seen[f"homeassistant/sensor/{node}/cpu_temperature/config"])
    assert (temp["device_class"], temp["unit_of_measurement"], temp["state_class"]) == (
        "temperature", "°C", "measurement")
    assert temp["availability_topic"] == avail
    assert temp["device"]["identifiers"] == [f"edgeproof_{dev}"]
    tv = [r for r in readings if r.stream == "tv"][-1].values[0]
    assert seen[f"edgeproof/{dev}/tv"] == (b"ON" if tv.mantissa else b"OFF")
    status = collect_status(tmp_path)  # what the agent knew at its last status write
    credit, outbox = status["credit"], status["outbox"]
    assert isinstance(credit, dict)
    assert isinstance(outbox, dict)
    assert Decimal(seen[f"edgeproof/{dev}/credit_accrued"].decode()) == Decimal(
        credit["accrued_micro"]) / 1_000_000 > 0
    assert seen[f"edgeproof/{dev}/outbox_depth"] == str(outbox["depth"]).encode()
    assert seen[f"edgeproof/{dev}/uplink"] == b"OFF"  # the fleet broker is unreachable
    local = status["agent"]["local_mqtt"]  # type: ignore[index]
    assert local["state"] == "stopped"
    assert agent_main(["status", "--state-dir", str(tmp_path)]) == 0
    assert f"local broker  stopped {broker.url}: " in capsys.readouterr().out
    assert local["counters"]["published"] >= len(configs) + 1
    assert local["counters"].get("ignored_messages", 0) == 0


def test_a_device_that_vanishes_from_the_local_broker_is_marked_offline_by_its_last_will(
        broker: MosquittoBroker, watcher: Watcher) -> None:
    device = DeviceInfo("ab" * 16, "edgeproof abababab", "test", "edgeproof", "homeassistant")
    with NetProxy(broker.port) as link:
        local = BrokerSettings(MqttConfig(link.url, "127.0.0.1", link.port, False))
        publisher = LocalPublisher(device, device_entities([], credit=False), local, "vanisher")
        publisher.start()
        try:
            assert watcher.wait_for(lambda seen: seen.get(device.availability_topic) == b"online")
            link.cut()  # the connection ends without DISCONNECT, and no reconnect gets through
            assert watcher.wait_for(
                lambda seen: seen.get(device.availability_topic) == b"offline")
            late = Watcher(broker.url)  # retained: what Home Assistant reads when it starts
            try:
                assert late.wait_for(lambda seen: seen.get(device.availability_topic)
                                     == b"offline")
            finally:
                late.stop()
        finally:
            publisher.stop()


def test_messages_on_the_local_broker_never_reach_what_the_device_signs(
        tmp_path: Path, gateway_key: str, broker: MosquittoBroker, watcher: Watcher) -> None:
    cfg = local_config(tmp_path, UNREACHABLE, gateway_key, broker.url)
    dev_hex = device_id_for(load_device_key(cfg.key_file).public_key).hex()
    forged = [f"edgeproof/{dev_hex}/cpu_temperature", f"edgeproof/{dev_hex}/cpu_temperature/set",
              f"edgeproof/{dev_hex}/tv", f"edgeproof/{dev_hex}/availability",
              "homeassistant/status", f"edgeproof/{dev_hex}/credit_accrued", "edgeproof"]
    for topic in forged:  # waiting for the agent when it connects, and again while it runs
        watcher.publish(topic, b"99.9", retain=True)
    readings: list[Reading] = []
    clock = ManualClock(wall_ms=int(evening() * 1000))
    sim = load_simulated_hardware(1, tmp_path, clock)
    service = AgentService(cfg, clock, sim=sim, options=ServiceOptions(on_reading=readings.append))
    service.start()
    try:
        assert watcher.wait_for(
            lambda seen: seen.get(f"edgeproof/{dev_hex}/availability") == b"online")
        for i in range(8):
            for topic in forged:
                watcher.publish(topic, f"{i}".encode() * 3)
            clock.advance(1000)
            service.step()
        records = outbox_records(service)
        assert service.local is not None
        publisher_status = service.local.status()
    finally:
        service.shutdown()
        sim.close()
    signed = [(r.stream, r.body.values) for r in records
              if isinstance(r.body, Values)]
    handed_over = [(r.stream, r.values) for r in readings if r.stream != "climate"]
    assert signed == handed_over  # every signed value came from a sensor, in order
    assert len(signed) >= 16
    counters = publisher_status["counters"]
    assert isinstance(counters, dict)
    assert counters.get("ignored_messages", 0) == 0  # never subscribed: nothing came in


class SilentBroker:
    """Accepts TCP connections and never says a word (a hung broker)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"mqtt://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("local_kind", ["closed-port", "silent"])
def test_a_dead_or_hung_local_broker_costs_counters_not_sampling_or_the_fleet_uplink(
        tmp_path: Path, broker: MosquittoBroker, local_kind: str) -> None:
    responder = Responder(broker.url).start()
    silent = SilentBroker() if local_kind == "silent" else None
    local = silent.url if silent else UNREACHABLE
    cfg = local_config(tmp_path, broker.url, responder.verifier_key, local,
                       service={"final_flush_s": 0.0, "status_interval_s": 0.5})
    device_id = responder.register(load_device_key(cfg.key_file).public_key)
    sim = load_simulated_hardware(1, tmp_path, SystemClock())
    service = AgentService(cfg, SystemClock(), sim=sim)
    stop = threading.Event()
    service.start()
    runner = threading.Thread(target=service.run, args=(stop,))
    runner.start()
    try:
        # The fleet path works as if the local broker did not exist: records go out and
        # their receipts come back while the local connection fails over and over.
        assert responder.wait_for(lambda: len(responder.logged.get(device_id).records) >= 12
                                  if responder.logged.get(device_id) else False)
        assert wait_until(lambda: service.outbox.stats().counter("receipt_delivered") >= 12)
        assert service.local is not None
        want = "connack_timeouts" if silent else "connect_failures"
        assert wait_until(lambda: service.local is not None
                          and service.local.counters[want] >= 1)
        assert service.local.status()["state"] in ("disconnected", "connecting")
        # Bounded: one pending slot per entity; newer values replaced older ones, counted.
        assert wait_until(lambda: service.local is not None
                          and service.local.counters["superseded"] >= 5)
        pending = service.local.status()["pending"]
        assert isinstance(pending, int)
        assert pending <= len(service.local.entities)
    finally:
        stop.set()
        runner.join(30)
        sim.close()
        responder.stop()
        if silent:
            silent.close()
    assert not runner.is_alive()


def test_an_owner_pinned_agent_shows_its_sealed_dht22_temperature_and_humidity_locally(
        tmp_path: Path, gateway_key: str, broker: MosquittoBroker, watcher: Watcher) -> None:
    """Every stream of an owner-pinned device is sealed to the owner alone: the owner's own
    readings, so the local broker gets them (before sealing), while the records stay
    sealed. (Regression: nothing but health reached Home Assistant once an owner was
    pinned.)"""
    owner = OwnerKey.generate()
    cfg = local_config(tmp_path, UNREACHABLE, gateway_key, broker.url,
                       owner={"public_key": owner.public_key.hex(),
                              "sealing_key": owner.sealing_public_key.hex()})
    readings: list[Reading] = []
    clock = ManualClock(wall_ms=int(evening() * 1000))
    sim = load_simulated_hardware(1, tmp_path, clock)
    service = AgentService(cfg, clock, sim=sim, options=ServiceOptions(on_reading=readings.append))
    service.start()
    dev = service.identity.device_id.hex()
    try:
        for _ in range(6):
            clock.advance(1000)
            service.step()
        climate = [r for r in readings if r.stream == "climate"][-1].values
        temp, humidity = (str(v.value).encode() for v in climate)
        assert watcher.wait_for(lambda seen: (
            seen.get(f"edgeproof/{dev}/climate_temperature"),
            seen.get(f"edgeproof/{dev}/climate_humidity")) == (temp, humidity))
        assert all(isinstance(r.body, Sealed) for r in outbox_records(service)
                   if r.stream == "climate")
    finally:
        service.shutdown()
        sim.close()
    node = f"edgeproof_{dev[:16]}"
    configs = set(watcher.latest())
    assert {f"homeassistant/sensor/{node}/climate_temperature/config",
            f"homeassistant/sensor/{node}/climate_humidity/config"} <= configs


@pytest.mark.parametrize(("section", "named"), [
    ({"broker": "mqtt://127.0.0.1:1883", "streams": ["climate"]},
     "local_mqtt.streams: stream 'climate' is sealed"),
    ({"broker": "mqtt://127.0.0.1:1883", "streams": ["nope"]},
     "local_mqtt.streams: unknown stream"),
    ({"broker": "mqtt://127.0.0.1:1883", "topic_prefix": "home/#"},
     "local_mqtt.topic_prefix"),
    ({"broker": "mqtt://127.0.0.1:1883", "password_file": "/x"},
     "local_mqtt.password_file: needs local_mqtt.username"),
    ({}, "local_mqtt.broker: required"),
])
def test_a_bad_local_mqtt_section_is_refused_naming_the_key(
        tmp_path: Path, gateway_key: str, section: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        config(tmp_path, UNREACHABLE, gateway_key, sensors=SENSORS,
               recipients={"acme": ACME}, local_mqtt=section)


def test_metrics_file_must_be_a_prom_file(tmp_path: Path, gateway_key: str) -> None:
    with pytest.raises(ConfigError, match=r"metrics.textfile: must end in \.prom"):
        config(tmp_path, UNREACHABLE, gateway_key, metrics={"textfile": "m.txt"})


def notice(owner: OwnerKey, epoch: int, entitled: int, claimed: int | None) -> PayoutNotice:
    return PayoutNotice(owner.owner_id, epoch, b"\x11" * 20, entitled, claimed, 1337,
                        b"\x22" * 20, b"\x33" * 32)


def test_payout_notice_is_shown_only_when_the_pinned_gateway_signed_it_for_the_pinned_owner(
        ) -> None:
    """Forged, misdirected, rolled-back, oversized and garbage answers are refused and
    counted by reason; only a verified notice reaches the local publisher's states."""
    responder, owner = Responder("mqtt://127.0.0.1:1"), OwnerKey.generate()
    server = NoticeServer()
    offered: list[dict[str, str]] = []
    watcher = PayoutWatcher(server.url, 600, gateway_key=responder.key.public_key,
                            owner_key=owner.public_key, offer=lambda s: offered.append(dict(s)))
    try:
        watcher.poll()  # no posted epoch yet: nothing to show, not an error
        assert (offered, watcher.error, watcher.counters["not_yet"]) == ([], None, 1)
        assert server.paths == [f"/v1/payouts/notice/{owner.owner_id.hex()}"]
        server.serve(notice(owner, 3, 5_250_000, 1_000_000), responder.key)
        watcher.poll()
        assert offered == [{"credit_payable": "5.25", "credit_claimed": "1",
                            "credit_claimable": "4.25"}]
        refused = [
            ("unverified", lambda: server.serve(notice(owner, 4, 9, 0), SigningKey.generate())),
            ("unverified", lambda: server.serve(notice(OwnerKey.generate(), 4, 9, 0),
                                                responder.key)),
            ("older_epoch", lambda: server.serve(notice(owner, 2, 9, 0), responder.key)),
            ("malformed", lambda: setattr(server, "answer", (200, b"{\"document\": \"zz\"}"))),
            ("too_large", lambda: setattr(server, "answer", (200, b" " * (64 * 1024 + 1)))),
            ("http_500", lambda: setattr(server, "answer", (500, b"{}"))),
        ]
        for reason, answer in refused:
            answer()
            watcher.poll()
            assert str(watcher.error).startswith(reason)
        assert len(offered) == 1  # nothing refused was shown
        assert watcher.counters == {"not_yet": 1, "accepted": 1, "unverified": 2,
                                    "older_epoch": 1, "malformed": 1, "too_large": 1,
                                    "http_500": 1}
        server.serve(notice(owner, 4, 6_000_000, None), responder.key)  # chain unread
        watcher.poll()
        assert offered[-1] == {"credit_payable": "6"}
        assert watcher.status()["epoch"] == 4
    finally:
        server.close()
    watcher.poll()  # the gateway gone: counted, the last figures stay
    assert watcher.counters["unreachable"] == 1
    assert watcher.status()["entitled_micro"] == 6_000_000


@pytest.mark.parametrize(("section", "named"), [
    ({"payout_url": "ftp://gw"}, "local_mqtt.payout_url: must be the gateway's http"),
    ({"payout_url": "http://gw:8080"}, r"local_mqtt.payout_url: needs \[owner\]"),
])
def test_a_bad_payout_url_is_refused_naming_the_key(
        tmp_path: Path, gateway_key: str, section: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        config(tmp_path, UNREACHABLE, gateway_key, sensors=SENSORS, recipients={"acme": ACME},
               local_mqtt={"broker": "mqtt://127.0.0.1:1883", **section})
