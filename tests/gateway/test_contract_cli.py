"""The owner's and the recipient's command lines against a real gateway and broker:
keys made and kept 0600 and never printed, a request signed and submitted, a narrower
consent and a revocation signed by the owner, documents checked offline, and the owner's
devices' data opened with the owner's own key."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from owner.cli import main as owner_main
from protocol.documents import verify_document
from protocol.keys import (
    OwnerPublic,
    RecipientKey,
    load_owner_key,
    load_signing_key,
    save_recipient_key,
)
from protocol.record import Measurement
from tests.gateway.conftest import RunningGateway
from tests.gateway.contractkit import (
    ADMIN,
    HOUR_MS,
    Parties,
    key_epoch,
    now_ms,
    sealed_reading,
    submitted,
)
from tests.gateway.gwkit import RATE, DeviceClient, TestDevice
from verifier.cli import main as verify_main

Capture = pytest.CaptureFixture[str]


def _json_out(capsys: Capture) -> list[dict[str, object]]:
    out: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return out


def test_owner_and_recipient_command_lines_run_the_whole_contract(
        gateway: RunningGateway, devices: DeviceClient, tmp_path: Path,
        capsys: Capture) -> None:
    url = gateway.base_url
    owner_file = tmp_path / "owner.key"
    assert owner_main(["init", "--key", str(owner_file)]) == 0
    printed = capsys.readouterr().out
    owner = load_owner_key(owner_file)
    assert stat.S_IMODE(owner_file.stat().st_mode) == 0o600
    assert owner.signing.seed.value.hex() not in printed
    assert owner.sealing.secret.value.hex() not in printed
    pinned = OwnerPublic.from_text(printed.splitlines()[-1])
    assert pinned == OwnerPublic.of(owner)

    # Enrolment pins the owner; the device seals climate to the owner and logs it.
    device = TestDevice.create("kitchen", 11)
    response = httpx.post(f"{url}/v1/devices", headers=ADMIN, json={
        "name": device.name, "public_key": device.enrolled_key.hex(), "owner": "olga",
        "rate_micro_per_hour": RATE, "owner_key": pinned.public_key.hex(),
        "owner_sealing_key": pinned.sealing_key.hex()})
    assert response.status_code == 201, response.text
    epoch, keys = key_epoch(device, {"climate": [pinned.sealing_key]})
    reading = sealed_reading(device, keys, (Measurement(214, -1, "Cel"),
                                            Measurement(553, -1, "%RH")))
    devices.send(device, [epoch.raw, reading.raw], batch_id=1)
    devices.wait_for(device.device_id, 1)

    # The recipient makes a signing key; the operator registers it.
    signing_file, sealing_file = tmp_path / "acme.sign", tmp_path / "acme.key"
    assert verify_main(["signing-key", "--out", str(signing_file)]) == 0
    assert stat.S_IMODE(signing_file.stat().st_mode) == 0o600
    sealing = RecipientKey.generate()
    save_recipient_key(sealing_file, sealing)
    response = httpx.post(f"{url}/v1/recipients", headers=ADMIN, json={
        "name": "acme", "signing_key": load_signing_key(signing_file).public_key.hex(),
        "sealing_key": sealing.public_key.hex()})
    assert response.status_code == 201, response.text
    capsys.readouterr()
    start = now_ms() - HOUR_MS
    assert verify_main([
        "request", "--gateway", url, "--signing-key", str(signing_file),
        "--recipient-key", str(sealing_file), "--device", device.device_id.hex(),
        "--field", "climate:Cel,%RH", "--min-interval", "60", "--not-before", str(start),
        "--not-after", str(start + 24 * HOUR_MS), "--purpose", "indoor study",
        "--reward", "20000", "--json"]) == 0
    request_id = json.loads(capsys.readouterr().out)["id"]

    key = ["--key", str(owner_file), "--gateway", url, "--json"]
    assert owner_main(["requests", *key]) == 0
    assert [r["id"] for r in _json_out(capsys)] == [request_id]
    assert owner_main(["consent", request_id, *key, "--field", "climate:Cel",
                       "--min-interval", "120"]) == 0
    consent = _json_out(capsys)[0]
    assert consent["streams"] == {"climate": ["Cel"]}
    assert consent["min_interval_s"] == 120
    assert owner_main(["revoke", str(consent["id"]), *key]) == 0
    revocation = _json_out(capsys)[0]
    assert (revocation["consent"], revocation["counter"]) == (consent["id"], 1)
    assert "lapses_on_shortfall" not in consent  # absent unless the owner allows it
    assert owner_main(["consent", request_id, *key, "--field", "climate:Cel",
                       "--lapse-on-shortfall"]) == 0
    assert _json_out(capsys)[0]["lapses_on_shortfall"] is True  # signed into the consent

    # Anyone checks the logged consent offline, and that the pinned owner key signed it.
    logged = httpx.get(f"{url}/v1/documents/{consent['id']}").json()
    path = tmp_path / "consent.hex"
    path.write_text(logged["document"])
    assert verify_main(["document", str(path), "--signer", pinned.public_key.hex()]) == 0
    assert verify_main(["document", str(path), "--signer", os.urandom(32).hex()]) == 1
    verify_document(bytes.fromhex(logged["document"]), expected_signer=owner.public_key)

    # The owner reads all of its device's data with its own key, with times.
    capsys.readouterr()
    assert owner_main(["data", "--key", str(owner_file), "--gateway", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"device {device.device_id.hex()}"
    assert "decrypted" in lines[1]
    assert "21.4 Cel, 55.3 %RH" in lines[1]
    assert "Z" in lines[1]  # the wall time, ISO 8601 UTC


def test_owner_commands_refuse_bad_input_in_one_line(
        gateway: RunningGateway, tmp_path: Path, capsys: Capture) -> None:
    owner_file = tmp_path / "owner.key"
    assert owner_main(["init", "--key", str(owner_file)]) == 0
    assert owner_main(["init", "--key", str(owner_file)]) == 2  # never overwrites a key
    os.chmod(owner_file, 0o644)
    capsys.readouterr()
    assert owner_main(["show", "--key", str(owner_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "chmod 600" in err
    os.chmod(owner_file, 0o600)
    assert owner_main(["consent", "00" * 32, "--key", str(owner_file),
                       "--gateway", gateway.base_url]) == 2
    assert "no logged request" in capsys.readouterr().err


def test_verify_record_on_a_document_leaf_says_what_it_is(
        gateway: RunningGateway, devices: DeviceClient, capsys: Capture) -> None:
    parties = Parties.enrol(gateway.base_url, devices)
    index = submitted(gateway.base_url, parties.request())
    capsys.readouterr()
    assert verify_main(["record", "--gateway", gateway.base_url, "--leaf", str(index)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "is a signed request, not a record" in err
