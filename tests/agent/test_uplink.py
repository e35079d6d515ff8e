"""The uplink against a real Mosquitto and a receipt responder built from protocol/."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.uplink import (
    BrokerSettings,
    MqttConfig,
    MqttTransport,
    UplinkSettings,
)
from firmware_sim.broker import MosquittoBroker, free_port
from protocol import reasons
from protocol.errors import KeyFileError
from tests.agent.responder import Responder
from tests.agent.uplinkkit import Device
from tests.harness.waiting import within


@pytest.fixture
def device(tmp_path: Path, broker: MosquittoBroker, responder: Responder) -> Iterator[Device]:
    d = Device(tmp_path, broker.url, responder.verifier_key)
    responder.register(d.public_key)
    yield d
    d.close()


def logged_seqs(responder: Responder, device: Device) -> set[int]:
    log = responder.logged.get(device.device_id)
    return set(log.records) if log else set()


def test_readings_arrive_and_receipts_empty_the_outbox(device: Device,
                                                       responder: Responder) -> None:
    seqs = device.write(50)
    device.uplink.start()
    assert responder.wait_for(lambda: device.depth() == 0)
    assert logged_seqs(responder, device) == set(seqs)
    stats = device.outbox.stats()
    assert stats.counter("receipt_delivered") == 50
    assert stats.counters["last_receipt_batch"] >> 32 == device.outbox.boot


def test_broker_outage_backlog_drains_with_nothing_lost_or_duplicated(
        device: Device, responder: Responder, broker: MosquittoBroker) -> None:
    device.uplink.start()
    first = device.write(20)
    assert responder.wait_for(lambda: device.depth() == 0)
    broker.stop()
    during = device.write(60)  # committed while the broker is away
    time.sleep(0.5)
    assert device.depth() == 60
    broker.start()
    assert responder.wait_for(lambda: device.depth() == 0, timeout_s=60)
    log = responder.logged[device.device_id]
    assert set(log.records) == set(first) | set(during)
    assert log.equivocations == []
    assert device.uplink.counters["connects"] >= 2


def test_no_receipt_means_nothing_is_deleted(device: Device, responder: Responder) -> None:
    responder.paused = True
    seqs = device.write(30)
    device.uplink.start()
    assert responder.wait_for(lambda: device.uplink.counters["pubacks"] >= 2)
    time.sleep(0.3)
    assert device.depth() == 30  # PUBACKs arrived; nothing was removed
    responder.paused = False
    assert responder.wait_for(lambda: device.depth() == 0)  # resent after the time-out
    assert logged_seqs(responder, device) == set(seqs)
    assert device.uplink.counters["receipt_timeouts"] >= 1


def test_broker_that_acknowledges_but_drops_loses_nothing(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker", max_queued_messages=1,
                             max_inflight_messages=1)
    broker.start()
    try:
        responder = Responder(broker.url).start()
        responder.delay_s = 0.02  # a slow subscriber: the broker's queue overflows
        settings = UplinkSettings(batch_max_records=5, batch_interval_ms=10,
                                  receipt_timeout_ms=800, max_inflight_batches=20,
                                  backoff_min_ms=100, poll_ms=10)
        device = Device(tmp_path / "dev", broker.url, responder.verifier_key, settings)
        responder.register(device.public_key)
        seqs = device.write(100)
        device.uplink.start()
        assert responder.wait_for(lambda: device.depth() == 0, timeout_s=60)
        assert logged_seqs(responder, device) == set(seqs)
        assert device.uplink.counters["receipt_timeouts"] >= 1  # the broker did drop some
        device.close()
        responder.stop()
    finally:
        broker.kill()


def test_receipt_from_another_key_removes_nothing(tmp_path: Path,
                                                  broker: MosquittoBroker) -> None:
    impostor = Responder(broker.url, seed=bytes(32 * [7])).start()
    trusted = Responder(broker.url)  # its key is configured; it never answers
    device = Device(tmp_path / "dev", broker.url, trusted.verifier_key)
    impostor.register(device.public_key)
    try:
        device.write(10)
        device.uplink.start()
        assert impostor.wait_for(lambda: device.uplink.counters["bad_receipts"] >= 1)
        assert device.depth() == 10
    finally:
        device.close()
        impostor.stop()


def test_rejected_records_move_to_dead_letters_with_the_reason(
        device: Device, responder: Responder) -> None:
    responder.reject_streams["cpu"] = reasons.FUTURE_TIMESTAMP
    device.write(5)
    device.uplink.start()
    assert responder.wait_for(lambda: device.depth() == 0)
    assert device.outbox.stats().dead_letters == {reasons.FUTURE_TIMESTAMP: 5}


def _password_file(tmp: Path, user: str, password: str) -> Path:
    path = tmp / "passwd"
    path.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True,
                   capture_output=True)
    return path


def test_bad_credentials_stop_the_uplink_with_a_clear_error(tmp_path: Path) -> None:
    # Started as root, mosquitto would drop to its own user and fail to read tmp_path.
    broker = MosquittoBroker(tmp_path / "broker", extra_config="user root\n",
                             password_file=_password_file(tmp_path, "dev", "right"))
    broker.start()
    try:
        device = Device(tmp_path / "dev", broker.url, Responder(broker.url).verifier_key,
                        username="dev", password="wrong")
        device.write(3)
        device.uplink.start()
        within(lambda: device.uplink.failed, 30, every_s=0.05)
        status = device.uplink.status()
        assert status.state == "failed"
        assert status.error is not None
        assert "refused" in status.error
        assert "0x86" in status.error or "0x87" in status.error
        time.sleep(0.5)
        assert device.uplink.counters["connect_attempts"] == 1  # no hammering
        assert device.depth() == 3
        device.close()
    finally:
        broker.kill()


def test_batches_the_gateway_refuses_whole_are_split_and_still_delivered(
        device: Device, responder: Responder) -> None:
    responder.refuse_batches_over = 3
    seqs = device.write(40)
    device.uplink.start()
    assert responder.wait_for(lambda: device.depth() == 0)
    assert logged_seqs(responder, device) == set(seqs)
    assert device.uplink.counters[f"batches_refused_{reasons.TOO_LARGE}"] >= 1
    assert device.outbox.stats().dead_letters == {}


def test_unknown_device_rejections_reach_dead_letters_not_endless_resends(
        tmp_path: Path, broker: MosquittoBroker, responder: Responder) -> None:
    stranger = Device(tmp_path / "stranger", broker.url, responder.verifier_key)
    try:
        stranger.write(4)
        stranger.uplink.start()
        assert responder.wait_for(lambda: stranger.depth() == 0)
        assert stranger.outbox.stats().dead_letters == {reasons.UNKNOWN_DEVICE: 4}
    finally:
        stranger.close()


def _tls_files(tmp: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    tmp.mkdir(parents=True, exist_ok=True)
    files = {n: tmp / n for n in ("ca.key", "ca.crt", "server.key", "server.crt",
                                  "client.key", "client.crt")}

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)

    ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=edgeproof test CA")
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        ext = tmp / f"{name}.ext"
        ext.write_text(extra + "\n")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", str(ext))
    files["client.key"].chmod(0o600)
    return files


def test_tls_with_ca_and_client_certificate_delivers(tmp_path: Path) -> None:
    tls = _tls_files(tmp_path / "tls")
    tls_port = free_port()
    broker = MosquittoBroker(tmp_path / "broker", extra_config=(
        f"user root\nlistener {tls_port} 127.0.0.1\ncafile {tls['ca.crt']}\n"
        f"certfile {tls['server.crt']}\nkeyfile {tls['server.key']}\n"
        "require_certificate true\n"))
    broker.start()
    try:
        responder = Responder(broker.url).start()  # on the plain listener
        url = f"mqtts://127.0.0.1:{tls_port}"
        device = Device(tmp_path / "dev", url, responder.verifier_key,
                        tls=(tls["ca.crt"], tls["client.crt"], tls["client.key"]))
        responder.register(device.public_key)
        seqs = device.write(10)
        device.uplink.start()
        assert responder.wait_for(lambda: device.depth() == 0)
        assert logged_seqs(responder, device) == set(seqs)
        device.close()
        responder.stop()
    finally:
        broker.kill()


def test_tls_client_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    tls = _tls_files(tmp_path / "tls")
    tls["client.key"].chmod(0o644)
    broker = BrokerSettings(MqttConfig("mqtts://127.0.0.1:8883", "127.0.0.1", 8883, True,
                                       ca_file=tls["ca.crt"], cert_file=tls["client.crt"],
                                       key_file=tls["client.key"]))
    with pytest.raises(KeyFileError, match="chmod 600"):
        MqttTransport(broker, "x")
