"""The optional TLS listener (``broker-config --tls-port``): a device authenticates with a
client certificate whose CN is its device id, and the same ACL confines it.

Certificates are made with the openssl command line, as docs/OPERATIONS.md ("TLS with
client certificates") tells an operator to.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.broker import free_port
from protocol.batch import records_topic
from provisioning.devices_store import load_record
from tests.harness.waiting import eventually
from tests.provisioning.provision_live import LiveFleet, gateway_probe, live_fleet_fixture
from tests.provisioning.provision_probe import Probe, connect

OPENSSL = shutil.which("openssl")


def openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
            "-subj", f"/CN={name}", cwd=d)


def make_cert(d: Path, ca: str, name: str, cn: str, *, server: bool = False) -> None:
    """Key and certificate ``name`` signed by ``ca`` (the commands OPERATIONS.md shows)."""
    extra = ["-addext", "subjectAltName=IP:127.0.0.1"] if server else []
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", *extra,
            cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-copy_extensions",
            "copyall", cwd=d)


@dataclass
class TlsFleet:
    live: LiveFleet
    pki: Path
    tls_port: int


@pytest.fixture(scope="module")
def tls_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFleet]:
    if OPENSSL is None:
        pytest.skip("openssl is not installed")
    pki = tmp_path_factory.mktemp("pki")
    make_ca(pki, "ca")
    make_cert(pki, "ca", "broker", "127.0.0.1", server=True)
    make_ca(pki, "rogue-ca")
    port = free_port()

    def args(base: Path) -> list[str]:
        return ["--tls-port", str(port), "--cafile", str(pki / "ca.crt"),
                "--certfile", str(pki / "broker.crt"), "--keyfile", str(pki / "broker.key")]

    for live in live_fleet_fixture(tmp_path_factory, args):
        yield TlsFleet(live, pki, port)


def tls_connect(fleet: TlsFleet, cert: str | None, ca: str = "ca") -> Probe | None:
    """Connect over TLS with client certificate ``cert``; None when the handshake fails."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tls-{cert}",
                         protocol=mqtt.MQTTv5)
    pki = fleet.pki
    client.tls_set(ca_certs=str(pki / "ca.crt"),
                   certfile=str(pki / f"{cert}.crt") if cert else None,
                   keyfile=str(pki / f"{cert}.key") if cert else None,
                   tls_version=ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe = connect(fleet.tls_port, None, None, client=client)
    except (ssl.SSLError, OSError):
        return None
    return probe if probe.connack is not None else None


def test_certificate_cn_is_the_acl_user_over_tls(tls_fleet: TlsFleet) -> None:
    live = tls_fleet.live
    assert live.run("device", "add", "tls-dev") == 0
    assert live.run("device", "add", "tls-other") == 0
    me = load_record(live.config, "tls-dev").device_id
    other = load_record(live.config, "tls-other").device_id
    make_cert(tls_fleet.pki, "ca", "tls-dev", me)
    watcher = gateway_probe(live)
    device = tls_connect(tls_fleet, "tls-dev")
    assert device is not None
    assert device.connack is not None
    assert not device.connack.is_failure, device.connack
    try:
        watcher.subscribe("edgeproof/v1/devices/+/records")
        assert not device.publish(records_topic(bytes.fromhex(me)), b"mine").is_failure
        assert str(device.publish(records_topic(bytes.fromhex(other)), b"x")) == "Not authorized"
        assert watcher.wait_message(5.0)
        assert [t for t, _ in watcher.messages] == [records_topic(bytes.fromhex(me))]
    finally:
        device.close()
        watcher.close()


def test_tls_listener_refuses_clients_without_a_certificate_from_the_ca(
        tls_fleet: TlsFleet) -> None:
    assert tls_connect(tls_fleet, None) is None
    make_cert(tls_fleet.pki, "rogue-ca", "rogue", "0" * 32)
    assert tls_connect(tls_fleet, "rogue") is None


def test_revoked_device_has_no_topic_even_with_a_valid_certificate(
        tls_fleet: TlsFleet) -> None:
    live = tls_fleet.live
    assert live.run("device", "add", "tls-revoked") == 0
    me = load_record(live.config, "tls-revoked").device_id
    make_cert(tls_fleet.pki, "ca", "tls-revoked", me)
    assert live.run("device", "revoke", "tls-revoked") == 0

    def denied() -> bool:  # until the broker has applied the reload
        device = tls_connect(tls_fleet, "tls-revoked")
        if device is None or device.connack is None or device.connack.is_failure:
            return True  # refused outright is fine too
        try:
            return str(device.publish(records_topic(bytes.fromhex(me)), b"x")) == \
                "Not authorized"
        finally:
            device.close()

    # the bound: the broker's reload, on a slow machine too
    eventually(denied, "the revoked device being refused over TLS", 30.0, every_s=0.1)
