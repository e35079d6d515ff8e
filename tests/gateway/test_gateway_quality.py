"""Quality attestations at a real gateway on the real broker: a validator (a registered
recipient the devices seal their climate stream to) judges a window of three DHT22s and
its signed verdicts are logged as a leaf; every bad attestation (unregistered validator,
leaves that do not exist or that it cannot read, records outside the window, a second
attestation for the window, oversized) is refused with a reason, counted, changing nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest

from firmware_sim.broker import MosquittoBroker
from protocol import merkle
from protocol.documents import Document
from protocol.keys import RecipientKey, Secret, SigningKey, save_recipient_key, save_signing_key
from protocol.quality import QualityAttestation
from protocol.record import KEYS_STREAM, Measurement, Record, Values
from protocol.sealing import EpochKeys, new_key_epoch, seal_record
from protocol.signed import sign_record
from provisioning.sites import Site, SiteSensor, render
from tests.gateway.conftest import RunningGateway
from tests.gateway.contractkit import ADMIN, PolicyListener, rejections, submit, submitted
from tests.gateway.gwkit import DeviceClient, TestDevice, register
from tests.harness.waiting import eventually
from validator import SensorSpec, SiteSpec, SiteValidator
from validator.attest import attestation_for, sign_attestation
from validator.cli import main as validator_main
from verifier.cli import main as verify_main

T0_MS = 1_700_000_400_000  # on a 10-minute boundary
MINUTE_MS = 60_000


def sealed_reading(dev: TestDevice, keys: EpochKeys, tenths: int) -> bytes:
    dev.mono_ms += MINUTE_MS
    dev.wall_ms += MINUTE_MS
    values = (Measurement(tenths, -1, "Cel"),)
    header = Record(dev.boot, dev.seq, dev.prev, dev.wall_ms, dev.synced, dev.mono_ms,
                    "climate", Values(values))
    signed = sign_record(seal_record(dev.device_id, header, keys, values), dev.device_id,
                         dev.key)
    dev.seq += 1
    dev.prev = signed.hash
    dev.signed.append(signed)
    return signed.raw


@dataclass
class Room:
    """Three registered devices whose climate records are sealed to ``box`` (and their
    leaf indices by device), and a validator registered as recipient ``hub``."""

    base_url: str
    signing: SigningKey
    box: RecipientKey
    devices: list[TestDevice]
    leaves: dict[str, list[int]]
    values: dict[str, list[tuple[float, float]]]
    keys: list[EpochKeys] = field(default_factory=list)

    def attestation(self) -> QualityAttestation:
        site = SiteSpec("living-room", "Cel", tuple(
            SensorSpec(d.device_id.hex(), 0.5) for d in self.devices))
        verdict = SiteValidator(site).judge(T0_MS // 1000, self.values)
        return attestation_for(verdict, "climate", "Cel", self.leaves)

    def signed(self, body: QualityAttestation | None = None,
               key: SigningKey | None = None) -> Document:
        return sign_attestation(body or self.attestation(), key or self.signing, T0_MS)


def make_room(base_url: str, client: DeviceClient, sealed_to: str = "hub") -> Room:
    signing, box = SigningKey(Secret(b"\x11" * 32)), RecipientKey(Secret(b"\x12" * 32))
    other = RecipientKey(Secret(b"\x13" * 32))
    for name, s, b in (("hub", signing, box), ("other", SigningKey(Secret(b"\x14" * 32)),
                                               other)):
        response = httpx.post(f"{base_url}/v1/recipients", headers=ADMIN, json={
            "name": name, "signing_key": s.public_key.hex(), "sealing_key": b.public_key.hex()})
        assert response.status_code == 201, response.text
    seal_key = box if sealed_to == "hub" else other
    room = Room(base_url, signing, box, [], {}, {})
    for i, offset in enumerate((0, 1, 20)):  # the third reads 2.0 °C high
        dev = TestDevice.create(f"dht-{i}", 100 + i)
        dev.wall_ms = T0_MS - MINUTE_MS
        register(base_url, dev)
        body, keys = new_key_epoch(dev.device_id, 0, {"climate": [seal_key.public_key]})
        epoch = dev.next(body, stream=KEYS_STREAM, advance_ms=0).raw
        readings = [sealed_reading(dev, keys, 210 + offset + m % 3) for m in range(10)]
        client.send(dev, [epoch, *readings], batch_id=1)
        client.wait_for(dev.device_id, 1)
        logged = httpx.get(f"{base_url}/v1/devices/{dev.device_id.hex()}/records").json()
        name = dev.device_id.hex()
        room.leaves[name] = [r["index"] for r in logged["records"] if r["stream"] == "climate"]
        room.values[name] = [((T0_MS + m * MINUTE_MS) / 1000, (210 + offset + m % 3) / 10)
                             for m in range(10)]
        room.devices.append(dev)
        room.keys.append(keys)
    return room


@pytest.fixture
def room(gateway: RunningGateway, devices: DeviceClient) -> Room:
    return make_room(gateway.base_url, devices)


def test_validators_attestation_is_logged_as_a_leaf_with_a_proof(
        gateway: RunningGateway, room: Room) -> None:
    body = room.attestation()
    biased = body.of(room.devices[2].device_id)
    assert (biased.state, biased.reasons) == ("suspect", ("bias",))
    doc = room.signed(body)
    index = submitted(gateway.base_url, doc)
    listed = httpx.get(f"{gateway.base_url}/v1/documents", params={"type": "quality"}).json()
    assert [d["document"] for d in listed] == [doc.raw.hex()]
    store = gateway.service.store
    size = store.size()
    proof = merkle.inclusion_proof_from_nodes(store, index, size)
    merkle.verify_inclusion(merkle.leaf_hash(doc.raw), index, size, proof, store.root(size))
    assert submit(gateway.base_url, doc).status_code == 200  # the same bytes: already there


def refused(gateway: RunningGateway, doc: Document | bytes, reason: str) -> None:
    size = gateway.service.store.size()
    response = submit(gateway.base_url, doc)
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == reason
    assert rejections(gateway.base_url)[reason] >= 1
    assert gateway.service.store.size() == size


def test_attestation_from_an_unregistered_validator_is_refused(
        gateway: RunningGateway, room: Room) -> None:
    refused(gateway, room.signed(key=SigningKey(Secret(b"\x15" * 32))), "unknown_signer")


def test_attestation_naming_leaves_that_do_not_exist_or_are_not_its_devices_is_refused(
        gateway: RunningGateway, room: Room) -> None:
    body = room.attestation()
    a, b, c = body.sensors
    refused(gateway, room.signed(replace(body, sensors=(
        replace(a, leaves=(*a.leaves, 10_000)), b, c))), "unknown_leaf")
    refused(gateway, room.signed(replace(body, sensors=(
        replace(a, leaves=b.leaves), replace(b, leaves=a.leaves), c))), "unknown_leaf")
    # A uint64 leaf index past the log's signed 64-bit columns: a 500 on SQLite before.
    refused(gateway, room.signed(replace(body, sensors=(
        replace(a, leaves=(*a.leaves, 2**64 - 1)), b, c))), "unknown_leaf")


def test_attestation_naming_records_outside_its_window_is_refused(
        gateway: RunningGateway, room: Room) -> None:
    body = room.attestation()
    refused(gateway, room.signed(replace(body, window_start_ms=T0_MS + 600_000)),
            "outside_window")


def test_second_different_attestation_for_the_same_window_is_refused_as_conflicting(
        gateway: RunningGateway, room: Room) -> None:
    body = room.attestation()
    submitted(gateway.base_url, room.signed(body))
    refused(gateway, room.signed(replace(body, consensus=None)), "conflicting")


def test_oversized_attestation_is_refused(gateway: RunningGateway, room: Room) -> None:
    raw = room.signed().raw
    refused(gateway, raw + b"\x00" * 9000, "too_large")


def test_attestation_of_records_not_sealed_to_the_validator_is_refused(
        gateway: RunningGateway, devices: DeviceClient) -> None:
    room = make_room(gateway.base_url, devices, sealed_to="other")
    refused(gateway, room.signed(), "not_readable")


def test_validator_role_reads_its_granted_streams_attests_each_window_once(
        gateway: RunningGateway, room: Room, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "living-room.toml"
    site.write_text(render(Site("living-room", "climate", "Cel", "hub", tuple(
        SiteSensor(f"dht-{i}", d.device_id.hex(), 0.5) for i, d in enumerate(room.devices)))))
    save_signing_key(tmp_path / "hub.signing", room.signing)
    save_recipient_key(tmp_path / "hub.key", room.box)
    argv = ["once", "--site", str(site), "--gateway", gateway.base_url,
            "--signing-key", str(tmp_path / "hub.signing"),
            "--recipient-key", str(tmp_path / "hub.key"), "--json"]
    assert validator_main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["windows"], first["logged"], first["refused"]) == (1, 1, {})
    assert first["states"][room.devices[2].device_id.hex()] == "suspect"
    listed = httpx.get(f"{gateway.base_url}/v1/documents", params={"type": "quality"}).json()
    assert len(listed) == 1
    size = gateway.service.store.size()
    assert validator_main(argv) == 0  # a rerun judges the same log into the same bytes
    again = json.loads(capsys.readouterr().out)
    assert (again["logged"], again["already_logged"]) == (0, 1)
    assert gateway.service.store.size() == size


def validator_argv(room: Room, gateway: RunningGateway, tmp_path: Path) -> list[str]:
    site = tmp_path / "living-room.toml"
    site.write_text(render(Site("living-room", "climate", "Cel", "hub", tuple(
        SiteSensor(f"dht-{i}", d.device_id.hex(), 0.5) for i, d in enumerate(room.devices)))))
    save_signing_key(tmp_path / "hub.signing", room.signing)
    save_recipient_key(tmp_path / "hub.key", room.box)
    return ["once", "--site", str(site), "--gateway", gateway.base_url,
            "--signing-key", str(tmp_path / "hub.signing"),
            "--recipient-key", str(tmp_path / "hub.key"), "--json"]


def test_validator_with_a_state_file_judges_each_window_once_across_runs(
        gateway: RunningGateway, room: Room, devices: DeviceClient, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "living-room.state"
    argv = [*validator_argv(room, gateway, tmp_path), "--state", str(state)]
    assert validator_main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["windows"], first["logged"], first["already_logged"]) == (1, 1, 0)
    assert state.stat().st_mode & 0o777 == 0o600  # it holds decrypted readings
    size = gateway.service.store.size()
    assert validator_main(argv) == 0  # nothing new: nothing judged, nothing submitted
    again = json.loads(capsys.readouterr().out)
    assert (again["windows"], again["logged"], again["already_logged"]) == (0, 0, 0)
    assert gateway.service.store.size() == size
    for i, (dev, keys) in enumerate(zip(room.devices, room.keys, strict=True)):
        offset = (0, 1, 20)[i]  # the second window: the third device still 2.0 °C high
        devices.send(dev, [sealed_reading(dev, keys, 210 + offset + m % 3)
                           for m in range(10)], batch_id=2)
        devices.wait_for(dev.device_id, 2)
    size = gateway.service.store.size()
    assert validator_main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["windows"], second["logged"], second["already_logged"]) == (1, 1, 0)
    # the third device's second bad window in a row, judged on the state the first left
    assert second["states"][room.devices[2].device_id.hex()] == "suspect"
    assert gateway.service.store.size() == size + 1
    listed = httpx.get(f"{gateway.base_url}/v1/documents", params={"type": "quality"}).json()
    assert len(listed) == 2


def test_state_file_of_other_settings_or_open_to_others_is_refused_and_changes_nothing(
        gateway: RunningGateway, room: Room, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "living-room.state"
    argv = [*validator_argv(room, gateway, tmp_path), "--state", str(state)]
    assert validator_main([*argv, "--window-s", "300"]) == 0
    written = state.read_bytes()
    capsys.readouterr()
    size = gateway.service.store.size()
    assert validator_main(argv) == 2  # judged in 300 s windows: not this run's settings
    assert "not a validator state file" in capsys.readouterr().err
    state.chmod(0o644)
    assert validator_main([*argv, "--window-s", "300"]) == 2
    assert "must not be accessible" in capsys.readouterr().err
    assert gateway.service.store.size() == size
    assert state.read_bytes() == written


def wait_for_checkpoint_over(base_url: str, index: int, timeout: float = 60.0) -> None:
    def covered() -> bool:
        listed = httpx.get(f"{base_url}/v1/checkpoints").json()
        return bool(listed) and max(c["size"] for c in listed) > index
    # polling the condition: the gateway signs on its own interval
    eventually(covered, f"a checkpoint covering leaf {index}", timeout, every_s=0.2)


def test_verify_shows_the_verdicts_covering_a_record_with_proofs_offline(
        gateway: RunningGateway, room: Room, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    index = submitted(gateway.base_url, room.signed())
    wait_for_checkpoint_over(gateway.base_url, index)
    biased = room.devices[2].device_id.hex()
    bundle = tmp_path / "reading.bundle.json"
    capsys.readouterr()
    assert verify_main(["record", "--gateway", gateway.base_url, "--leaf",
                        str(room.leaves[biased][0]), "--gateway-key", gateway.verifier,
                        "--save", str(bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    [verdict] = report["verdicts"]
    assert (verdict["site"], verdict["state"], verdict["reasons"]) == (
        "living-room", "suspect", ["bias"])
    assert verdict["leaf_index"] == index
    # Offline: the bundle alone proves the verdict, and a forged one fails.
    assert verify_main(["bundle", str(bundle), "--gateway-key", gateway.verifier]) == 0
    assert "ok  quality attestations: living-room suspect (bias)" in capsys.readouterr().out
    saved = json.loads(bundle.read_text())
    forged = room.signed(replace(room.attestation(), consensus=None),
                         key=SigningKey(Secret(b"\x16" * 32)))
    saved["attestations"][0]["document"] = forged.raw.hex()
    bundle.write_text(json.dumps(saved))
    assert verify_main(["bundle", str(bundle), "--gateway-key", gateway.verifier]) == 1
    assert "quality attestations" in capsys.readouterr().err


def test_logged_attestation_is_delivered_to_every_device_it_judges(
        gateway: RunningGateway, broker: MosquittoBroker, room: Room) -> None:
    listener = PolicyListener(broker.port)
    try:
        doc = room.signed()
        index = submitted(gateway.base_url, doc)
        for dev in room.devices:
            delivery = listener.wait(dev.device_id, complete=False)
            assert delivery.documents == ((index, doc.raw),)
    finally:
        listener.close()
