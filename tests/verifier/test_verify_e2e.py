"""edgeproof-verify against a real gateway: records, bundles, tampering, recipient access."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from firmware_sim.broker import MosquittoBroker
from protocol.bundle import ProofBundle
from protocol.keys import RecipientKey, save_recipient_key
from protocol.note import NoteSigner
from protocol.receipt import Status
from protocol.record import Measurement, Record, Values
from protocol.sealing import new_key_epoch, seal_values
from tests.gateway.conftest import RunningGateway, start_gateway
from tests.gateway.gwkit import DeviceClient, TestDevice, register, write_gateway_files
from tests.harness.waiting import eventually
from verifier.cli import Waiting
from verifier.cli import main as verify


@dataclasses.dataclass
class World:
    gateway: RunningGateway
    device: TestDevice
    keys: dict[str, Path]
    leaves: dict[str, int]  # stream -> a leaf index holding a record of that stream
    client: DeviceClient


@pytest.fixture
def world(broker: MosquittoBroker, tmp_path: Path) -> Iterator[World]:
    gateway = start_gateway(write_gateway_files(tmp_path / "gw", broker.port, every_leaves=1))
    client = DeviceClient(broker.port, gateway.verifier)
    try:
        yield _populate(gateway, client, tmp_path)
    finally:
        client.close()
        gateway.stop()


def _populate(gateway: RunningGateway, client: DeviceClient, tmp: Path) -> World:
    recipients = {name: RecipientKey.generate() for name in ("alice", "bob", "eve")}
    keys = {}
    for name, key in recipients.items():
        keys[name] = tmp / f"{name}.key"
        save_recipient_key(keys[name], key)
    device = TestDevice.create("meter-1", seed=11)
    register(gateway.base_url, device)
    epoch_body, epoch = new_key_epoch(device.device_id, 0, {
        "climate": [recipients["alice"].public_key],
        "presence": [recipients["alice"].public_key, recipients["bob"].public_key]})
    raws = [device.next(epoch_body, stream="keys").raw]
    for stream, value in (("climate", Measurement(214, -1, "Cel")),
                          ("presence", Measurement(1, 0, "/")),
                          ("climate", Measurement(219, -1, "Cel"))):
        header = Record(device.boot, device.seq, device.prev, device.wall_ms + 1000, True,
                        device.mono_ms + 1000, stream, Values((value,)))
        raws.append(device.next(seal_values(device.device_id, header, epoch, [value]),
                                stream=stream).raw)
    raws.append(device.next(Values((Measurement(473, -1, "Cel"),)), stream="cpu").raw)
    client.send(device, raws, batch_id=1)
    receipt = client.wait_for(device.device_id, 1)
    assert all(o.status is Status.ACCEPTED for o in receipt.outcomes)
    leaves = {}
    for outcome, signed in zip(receipt.outcomes, device.signed, strict=True):
        leaves.setdefault(signed.record.stream, outcome.leaf_index)
    _wait_for_checkpoint(gateway.base_url, len(raws))
    return World(gateway, device, keys, leaves, client)  # type: ignore[arg-type]


def _wait_for_checkpoint(base_url: str, size: int) -> None:
    def covered() -> bool:
        response = httpx.get(f"{base_url}/v1/checkpoint")
        return response.status_code == 200 and int(response.text.split("\n")[1]) >= size
    eventually(covered, "a checkpoint covering the records", 20, every_s=0.1)


def test_logged_record_verifies_and_its_bundle_verifies_offline(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "proof.json"
    leaf = world.leaves["climate"]
    assert verify(["record", "--gateway", world.gateway.base_url, "--leaf", str(leaf),
                   "--gateway-key", world.gateway.verifier, "--save", str(bundle),
                   "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["check"] for c in report["checks"]] == [
        "gateway key", "record signature", "checkpoint signature", "inclusion proof"]
    world.gateway.stop()  # no network from here on
    assert verify(["bundle", str(bundle), "--gateway-key", world.gateway.verifier]) == 0
    assert "all requested checks passed" in capsys.readouterr().out


def test_record_given_as_a_file_is_found_in_the_log(world: World, tmp_path: Path) -> None:
    path = tmp_path / "record.cose"
    path.write_bytes(world.device.signed[4].raw)
    assert verify(["record", "--gateway", world.gateway.base_url, "--file", str(path),
                   "--gateway-key", world.gateway.verifier]) == 0
    forged = tmp_path / "forged.cose"
    raw = bytearray(world.device.signed[4].raw)
    raw[-1] ^= 1
    forged.write_bytes(bytes(raw))
    assert verify(["record", "--gateway", world.gateway.base_url, "--file", str(forged),
                   "--gateway-key", world.gateway.verifier]) == 1


@pytest.mark.parametrize(("tamper", "check"), [
    (lambda b: dataclasses.replace(b, record=b.record[:-1] + bytes([b.record[-1] ^ 0x80])),
     "record signature"),
    (lambda b: dataclasses.replace(b, inclusion_proof=(bytes(32), *b.inclusion_proof[1:])),
     "inclusion proof"),
    (lambda b: dataclasses.replace(b, leaf_index=b.leaf_index ^ 1), "inclusion proof"),
    (lambda b: dataclasses.replace(b, checkpoint=b.checkpoint.replace("\n", "\n\n", 1)),
     "checkpoint signature"),
])
def test_tampered_bundle_fails_with_the_check_named(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: object,
    check: str
) -> None:
    path = tmp_path / "proof.json"
    assert verify(["record", "--gateway", world.gateway.base_url, "--leaf",
                   str(world.leaves["cpu"]), "--gateway-key", world.gateway.verifier,
                   "--save", str(path)]) == 0
    capsys.readouterr()
    bundle = ProofBundle.from_json(path.read_text())
    path.write_text(tamper(bundle).to_json())  # type: ignore[operator]
    assert verify(["bundle", str(path), "--gateway-key", world.gateway.verifier]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"edgeproof-verify: FAILED: {check}:")


def test_gateway_not_trusted_by_the_auditor_fails(world: World) -> None:
    impostor = NoteSigner("gateway.test/edgeproof", bytes(32)).verifier_text()
    assert verify(["record", "--gateway", world.gateway.base_url, "--leaf", "0",
                   "--gateway-key", impostor]) == 1


def test_recipient_decrypts_exactly_the_streams_it_was_granted(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    def opened(name: str) -> dict[str, set[str]]:
        assert verify(["decrypt", "--gateway", world.gateway.base_url,
                       "--device", world.device.device_id.hex(),
                       "--key", str(world.keys[name]), "--json"]) == 0
        by_stream: dict[str, set[str]] = {}
        for row in json.loads(capsys.readouterr().out):
            by_stream.setdefault(row["stream"], set()).add(row["status"])
        return by_stream

    assert opened("alice") == {"climate": {"decrypted"}, "presence": {"decrypted"},
                               "cpu": {"plaintext"}}
    assert opened("bob") == {"climate": {"not_granted"}, "presence": {"decrypted"},
                             "cpu": {"plaintext"}}
    assert opened("eve") == {"climate": {"not_granted"}, "presence": {"not_granted"},
                             "cpu": {"plaintext"}}


def test_decrypted_values_are_the_ones_the_device_sealed(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert verify(["decrypt", "--gateway", world.gateway.base_url, "--device",
                   world.device.device_id.hex(), "--key", str(world.keys["alice"]),
                   "--stream", "climate", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["values"] for r in rows] == [[[214, -1, "Cel"]], [[219, -1, "Cel"]]]
    assert verify(["decrypt", "--gateway", world.gateway.base_url, "--device",
                   world.device.device_id.hex(), "--key", str(world.keys["alice"]),
                   "--stream", "climate"]) == 0
    first = capsys.readouterr().out.splitlines()[0].split()
    assert first[1:] == [_iso(world.device.signed[1].record.wall_ms), "synced", "climate",
                         "decrypted", "21.4", "Cel"]


def test_unpinned_gateway_key_is_reported_untrusted_with_its_real_source(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "proof.json"
    assert verify(["record", "--gateway", world.gateway.base_url, "--leaf", "1",
                   "--save", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert (f"warn  gateway key: UNTRUSTED, taken from the live gateway at "
            f"{world.gateway.base_url}") in out
    assert "ok  gateway key" not in out
    assert "bundle (not independently" not in out
    assert out.rstrip().endswith("against a gateway key that was not pinned")
    assert verify(["bundle", str(bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gateway_key"] == {"trusted": False, "source": f"the bundle {bundle}"}
    assert "gateway key" not in [c["check"] for c in report["checks"]]
    assert verify(["bundle", str(bundle), "--gateway-key", world.gateway.verifier]) == 0
    assert "ok  gateway key: matches the trusted key" in capsys.readouterr().out


def test_records_without_a_key_show_plaintext_with_times_and_sealed_as_no_key(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert verify(["records", "--gateway", world.gateway.base_url,
                   "--device", world.device.device_id.hex()]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_stream = {line.split()[3]: line for line in lines}
    cpu = world.device.signed[4].record
    assert by_stream["cpu"].split()[1:] == [
        _iso(cpu.wall_ms), "synced", "cpu", "plaintext", "47.3", "Cel"]
    assert "sealed (no key)" in by_stream["climate"]
    assert "21.4" not in by_stream["climate"]
    assert len(lines) == 4  # the key-epoch record carries no reading


def test_records_with_a_key_open_granted_streams_as_json_lines(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert verify(["records", "--gateway", world.gateway.base_url, "--device",
                   world.device.device_id.hex(), "--key", str(world.keys["bob"]),
                   "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["stream"], r["status"]) for r in rows] == [
        ("climate", "not_granted"), ("presence", "decrypted"), ("climate", "not_granted"),
        ("cpu", "plaintext")]
    presence = rows[1]
    assert presence["values"] == [{"value": "1", "unit": "/", "mantissa": 1, "exponent": 0}]
    assert presence["wall_time"] == _iso(world.device.signed[2].record.wall_ms)
    assert presence["clock_synced"] is True


def test_records_follow_prints_a_record_logged_while_it_waits(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    polls: list[float] = []

    def between_polls(interval: float) -> None:
        polls.append(interval)
        if len(polls) == 1:  # log one more reading, then let records poll again
            raw = world.device.next(Values((Measurement(480, -1, "Cel"),)), stream="cpu").raw
            world.client.send(world.device, [raw], batch_id=2)
            world.client.wait_for(world.device.device_id, 2)
            return
        raise KeyboardInterrupt  # what Ctrl-C does

    assert verify(["records", "--gateway", world.gateway.base_url, "--device",
                   world.device.device_id.hex(), "--stream", "cpu", "--follow",
                   "--interval", "0.25"], Waiting(sleep=between_polls)) == 130
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-2] for line in lines] == ["47.3", "48.0"]
    assert polls == [0.25, 0.25]


def test_records_follow_says_once_when_the_gateway_goes_away_and_keeps_polling(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    polls: list[float] = []

    def between_polls(interval: float) -> None:
        polls.append(interval)
        if len(polls) == 1:
            world.gateway.stop()
        elif len(polls) == 3:  # two polls failed while it was gone; enough
            raise KeyboardInterrupt

    assert verify(["records", "--gateway", world.gateway.base_url, "--device",
                   world.device.device_id.hex(), "--follow"],
                  Waiting(sleep=between_polls)) == 130
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 4  # what was there before it went away
    err = captured.err.splitlines()
    assert len(err) == 1
    assert "cannot reach" in err[0]
    assert err[0].endswith("still polling")


def _iso(wall_ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall_ms // 1000)) + \
        f".{wall_ms % 1000:03d}Z"
