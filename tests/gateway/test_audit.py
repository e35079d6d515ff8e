"""The audit: who could decrypt which fields of a device, from which consent, until which
revocation, proven from logged leaves with inclusion proofs, and checked again offline
from the saved bundle; a bundle that lies (another owner key, a leaf swapped, a grant to
someone else) fails."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from protocol.audit import AuditBundle, ProvedLeaf, verify_audit
from protocol.contract import Consent, body_of
from protocol.documents import Document
from protocol.errors import VerificationError
from protocol.grants import derived_stream
from protocol.keys import SigningKey
from tests.gateway.conftest import RunningGateway
from tests.gateway.contractkit import Parties, key_epoch, submitted
from tests.gateway.gwkit import DeviceClient
from tests.harness.waiting import eventually
from verifier.audit import build_audit
from verifier.cli import main as verify_main
from verifier.client import DocumentClient

Capture = pytest.CaptureFixture[str]


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    eventually(predicate, "the condition", timeout)


def _story(gateway: RunningGateway, devices: DeviceClient) -> tuple[Parties, Document, int]:
    """Request, consent, a key epoch applying it, the revocation, an epoch without it."""
    parties = Parties.enrol(gateway.base_url, devices)
    request = parties.request()
    submitted(gateway.base_url, request)
    consent = parties.consent(request)
    submitted(gateway.base_url, consent)
    device, owner_seal = parties.device, parties.owner.sealing_public_key
    derived = derived_stream("climate", consent.id)
    granted, _ = key_epoch(device, {"climate": [owner_seal],
                                    derived: [body_of(consent, Consent).recipient]},
                           {derived: consent.id})
    devices.send(device, [granted.raw], batch_id=2)
    devices.wait_for(device.device_id, 2)
    submitted(gateway.base_url, parties.revocation(consent))
    after, _ = key_epoch(device, {"climate": [owner_seal]})
    devices.send(device, [after.raw], batch_id=3)
    devices.wait_for(device.device_id, 3)
    store = gateway.service.store
    wait_for(lambda: (c := store.latest_checkpoint()) is not None and c.size == store.size())
    return parties, consent, granted.record.seq


def test_audit_shows_who_could_decrypt_what_from_which_consent_until_which_revocation(
        gateway: RunningGateway, devices: DeviceClient, tmp_path: Path,
        capsys: Capture) -> None:
    parties, consent, epoch_seq = _story(gateway, devices)
    device = parties.device.device_id.hex()
    bundle = tmp_path / "audit.json"
    key = parties.owner.public_key.hex()
    assert verify_main(["audit", "--gateway", gateway.base_url, "--device", device,
                        "--gateway-key", gateway.verifier, "--owner-key", key,
                        "--save", str(bundle), "--json"]) == 0
    online = json.loads(capsys.readouterr().out)
    [grant] = online["grants"]
    assert grant["consent"] == consent.id.hex()
    assert grant["fields"] == {"climate": ["Cel"]}
    assert grant["recipient"] == parties.buyer_sealing.public_key.hex()
    assert [e["seq"] for e in grant["applied_by"]] == [epoch_seq]
    assert grant["ended"]["by"] == "revocation"
    assert grant["ended"]["counter"] == 1
    assert grant["dropped_by"]["seq"] == epoch_seq + 1  # the device's next epoch drops it
    # Offline, from the bundle alone: the same answer.
    assert verify_main(["audit", "--bundle", str(bundle), "--gateway-key", gateway.verifier,
                        "--owner-key", key, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == online
    assert verify_main(["audit", "--bundle", str(bundle), "--gateway-key", gateway.verifier,
                        "--owner-key", key]) == 0
    text = capsys.readouterr().out
    assert "could decrypt climate: Cel" in text
    assert "until revocation" in text


def test_audit_bundle_that_lies_fails(gateway: RunningGateway, devices: DeviceClient) -> None:
    parties, consent, _ = _story(gateway, devices)
    client = DocumentClient(gateway.base_url)
    bundle = build_audit(client, parties.device.device_id, 0, 2**62, gateway.verifier)
    verify_audit(bundle, gateway.verifier, parties.owner.public_key)
    with pytest.raises(VerificationError, match="owner key"):
        verify_audit(bundle, gateway.verifier, SigningKey.generate().public_key)
    # A consent "signed" by another key claimed to be the owner's: the documents fail.
    forged_owner = AuditBundle(**{**bundle.__dict__, "owner_key": bytes(32)})
    with pytest.raises(VerificationError):
        verify_audit(forged_owner, gateway.verifier)
    # A leaf moved to another index: its inclusion proof fails.
    moved = tuple(ProvedLeaf(x.kind, x.leaf_index + 1, x.data, x.inclusion_proof)
                  if x.kind == "consent" else x for x in bundle.leaves)
    with pytest.raises(VerificationError, match="inclusion proof"):
        verify_audit(AuditBundle(**{**bundle.__dict__, "leaves": moved}), gateway.verifier)
    # The revocation left out: the proof still holds, the consent shows as in force (the
    # documented limit: a bundle proves what it shows, the public log shows what it omits).
    partial = tuple(x for x in bundle.leaves if x.kind != "revocation")
    audit = verify_audit(AuditBundle(**{**bundle.__dict__, "leaves": partial}),
                         gateway.verifier)
    assert audit.grants[0].revocation is None
    assert audit.grants[0].consent.id == consent.id
