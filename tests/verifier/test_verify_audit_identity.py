"""An audit bundle whose device id, enrolment key and owner key do not fit together fails
closed, offline, whatever leaves it holds: with no key-epoch leaf nothing else would look
at them (the audit found such a bundle PASSING with exit 0)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from protocol import merkle
from protocol.audit import AuditBundle, verify_audit
from protocol.checkpoint import Checkpoint
from protocol.errors import VerificationError
from protocol.keys import Secret, SigningKey, device_id_for
from protocol.note import NoteSigner
from verifier.cli import main as verify

GATEWAY = NoteSigner("gateway.test/log", bytes(range(32)))
DEVICE = SigningKey(Secret(bytes(range(1, 33))))
OWNER = SigningKey(Secret(bytes(range(3, 35))))
OTHER = SigningKey(Secret(bytes(range(5, 37))))


def _honest() -> AuditBundle:
    """A device with nothing granted: no leaves to prove, one signed checkpoint."""
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(3)]
    note = Checkpoint(GATEWAY.name, len(leaves), merkle.root(leaves)).sign(GATEWAY)
    return AuditBundle(device_id_for(DEVICE.public_key), DEVICE.public_key, OWNER.public_key,
                       0, 2**40, len(leaves), note, GATEWAY.verifier_text(), ())


TAMPERS: dict[str, Callable[[AuditBundle], AuditBundle]] = {
    "as the audit found it": lambda b: dataclasses.replace(
        b, device_public_key=b"\x11" * 32, device_id=b"\x22" * 5, owner_key=b"\x33" * 3),
    "another device's key": lambda b: dataclasses.replace(
        b, device_public_key=OTHER.public_key),
    "a 31-byte device key": lambda b: dataclasses.replace(
        b, device_public_key=DEVICE.public_key[:31]),
    "a 5-byte device id": lambda b: dataclasses.replace(b, device_id=b"\x22" * 5),
    "another device's id": lambda b: dataclasses.replace(
        b, device_id=device_id_for(OTHER.public_key)),
    "a 3-byte owner key": lambda b: dataclasses.replace(b, owner_key=b"\x33" * 3),
    "a 33-byte owner key": lambda b: dataclasses.replace(b, owner_key=OWNER.public_key + b"\0"),
}


def test_honest_audit_bundle_with_no_leaves_verifies(tmp_path: Path) -> None:
    bundle = _honest()
    assert AuditBundle.from_json(bundle.to_json()) == bundle
    verify_audit(bundle, GATEWAY.verifier_text(), OWNER.public_key)
    path = tmp_path / "audit.json"
    path.write_text(bundle.to_json())
    assert verify(["audit", "--bundle", str(path), "--gateway-key",
                   GATEWAY.verifier_text()]) == 0


@pytest.mark.parametrize("tamper", TAMPERS.values(), ids=TAMPERS.keys())
def test_audit_bundle_with_inconsistent_device_id_key_or_owner_key_fails_closed(
        tamper: Callable[[AuditBundle], AuditBundle], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tamper(_honest())
    with pytest.raises(VerificationError, match=r"device key|device id|owner key"):
        verify_audit(bundle, GATEWAY.verifier_text())
    path = tmp_path / "audit.json"
    path.write_text(bundle.to_json())
    assert verify(["audit", "--bundle", str(path), "--gateway-key",
                   GATEWAY.verifier_text()]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("edgeproof-verify: FAILED: ")
