"""Proof bundles: everything needed to check one record offline, in one JSON file.

A bundle holds a record's signed bytes, the device key it was signed with, its leaf index
and an inclusion proof into a tree of ``tree_size`` leaves, the gateway's signed checkpoint
of that size and the gateway's verifier key, and optionally the anchor of that checkpoint
on a chain. :func:`verify_bundle` checks all of it with no network and returns a report of
the checks that passed, or raises :class:`VerificationError` naming the check that failed.

The gateway's key in the bundle is only a claim: an auditor passes the key they trust
(``trusted_gateway_key``) and the bundle must match it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from protocol import merkle
from protocol.checkpoint import Checkpoint, checkpoint_hash
from protocol.errors import EdgeproofError, MalformedRecord, VerificationError
from protocol.keys import device_id_for
from protocol.note import NoteVerifier
from protocol.signed import SignedRecord, verify_signed_record

T = TypeVar("T")
BUNDLE_FORMAT = "edgeproof-proof-bundle/1"
MAX_BUNDLE_BYTES = 256 * 1024
MAX_PROOF_NODES = 64


@dataclass(frozen=True)
class EthereumAnchor:
    """Where a checkpoint's hash was written on an Ethereum-compatible chain."""

    chain_id: int
    tx_hash: str
    block_number: int
    tx_input: bytes

    def to_json(self) -> dict[str, Any]:
        return {"type": "ethereum", "chain_id": self.chain_id, "tx_hash": self.tx_hash,
                "block_number": self.block_number, "tx_input": self.tx_input.hex()}


@dataclass(frozen=True)
class ProofBundle:
    """One record with its inclusion proof, checkpoint and (optional) anchor."""

    record: bytes
    device_public_key: bytes
    leaf_index: int
    tree_size: int
    inclusion_proof: tuple[bytes, ...]
    checkpoint: str
    gateway_key: str
    anchor: EthereumAnchor | None = None

    def to_json(self) -> str:
        """Return the bundle as JSON text (hex for bytes)."""
        return json.dumps({
            "format": BUNDLE_FORMAT,
            "record": self.record.hex(),
            "device_public_key": self.device_public_key.hex(),
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "inclusion_proof": [node.hex() for node in self.inclusion_proof],
            "checkpoint": self.checkpoint,
            "gateway_key": self.gateway_key,
            "anchor": self.anchor.to_json() if self.anchor else None,
        }, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> ProofBundle:
        """Parse bundle JSON; raise MalformedRecord("bad_bundle") naming what is wrong."""
        if len(text) > MAX_BUNDLE_BYTES:
            raise MalformedRecord("bad_bundle", f"bundle larger than {MAX_BUNDLE_BYTES} bytes")
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise MalformedRecord("bad_bundle", "not JSON") from None
        if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
            raise MalformedRecord("bad_bundle", f"format must be {BUNDLE_FORMAT!r}")
        proof = _field(data, "inclusion_proof", list)
        if len(proof) > MAX_PROOF_NODES:
            raise MalformedRecord("bad_bundle", "inclusion proof too long")
        anchor = data.get("anchor")
        return cls(
            record=_hex(_field(data, "record", str), "record"),
            device_public_key=_hex(_field(data, "device_public_key", str), "device_public_key"),
            leaf_index=_field(data, "leaf_index", int),
            tree_size=_field(data, "tree_size", int),
            inclusion_proof=tuple(_hex(n, "inclusion_proof") for n in proof),
            checkpoint=_field(data, "checkpoint", str),
            gateway_key=_field(data, "gateway_key", str),
            anchor=_anchor_from(anchor) if anchor is not None else None,
        )


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedRecord("bad_bundle", f"{name} must be a {kind.__name__}")
    return value


def _hex(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedRecord("bad_bundle", f"{name} must be hex text")
    try:
        return bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise MalformedRecord("bad_bundle", f"{name} is not hex") from None


def _anchor_from(data: object) -> EthereumAnchor:
    if not isinstance(data, dict) or data.get("type") != "ethereum":
        raise MalformedRecord("bad_bundle", "anchor must be null or of type 'ethereum'")
    return EthereumAnchor(
        chain_id=_field(data, "chain_id", int),
        tx_hash=_field(data, "tx_hash", str),
        block_number=_field(data, "block_number", int),
        tx_input=_hex(_field(data, "tx_input", str), "tx_input"),
    )


@dataclass
class BundleReport:
    """The checks that passed, in order, each with a one-line detail."""

    passed: list[tuple[str, str]] = field(default_factory=list)
    record: SignedRecord | None = None
    checkpoint: Checkpoint | None = None


def verify_bundle(bundle: ProofBundle, trusted_gateway_key: str | None = None) -> BundleReport:
    """Check every part of a bundle offline.

    Returns the report of passed checks. Raises VerificationError whose message starts
    with the name of the failed check: ``gateway key``, ``record signature``,
    ``checkpoint signature``, ``inclusion proof`` or ``anchor``.
    """
    report = BundleReport()
    _check(report, "gateway key", lambda: _gateway_key(bundle, trusted_gateway_key))
    report.record = _check(report, "record signature", lambda: _record(bundle))
    report.checkpoint = _check(report, "checkpoint signature", lambda: _checkpoint(bundle))
    _check(report, "inclusion proof", lambda: _inclusion(bundle, report.checkpoint))
    if bundle.anchor is not None:
        _check(report, "anchor", lambda: _anchor(bundle))
    return report


def _check(report: BundleReport, name: str, check: Callable[[], tuple[T, str]]) -> T:
    try:
        result, detail = check()
    except EdgeproofError as exc:
        raise VerificationError(f"{name}: {exc}") from exc
    report.passed.append((name, detail))
    return result


def _gateway_key(bundle: ProofBundle, trusted: str | None) -> tuple[None, str]:
    if trusted is None:
        return None, "taken from the bundle (not independently trusted)"
    if trusted.strip() != bundle.gateway_key.strip():
        raise VerificationError("the bundle names another gateway key than the trusted one")
    return None, "matches the trusted key"


def _record(bundle: ProofBundle) -> tuple[SignedRecord, str]:
    signed = verify_signed_record(bundle.record, bundle.device_public_key)
    note = "enrolment key" if device_id_for(bundle.device_public_key) == signed.device_id \
        else "a rotated key"
    r = signed.record
    return signed, (f"device {signed.device_id.hex()} seq {r.seq} stream {r.stream!r}, "
                    f"signed with its {note}")


def _checkpoint(bundle: ProofBundle) -> tuple[Checkpoint, str]:
    verifier = NoteVerifier.from_text(bundle.gateway_key)
    checkpoint = Checkpoint.from_note(bundle.checkpoint, verifier)
    if checkpoint.size != bundle.tree_size:
        raise VerificationError(
            f"checkpoint is for tree size {checkpoint.size}, the proof for {bundle.tree_size}")
    return checkpoint, f"{checkpoint.origin} size {checkpoint.size} signed by the gateway"


def _inclusion(bundle: ProofBundle, checkpoint: Checkpoint | None) -> tuple[None, str]:
    assert checkpoint is not None
    merkle.verify_inclusion(merkle.leaf_hash(bundle.record), bundle.leaf_index,
                            bundle.tree_size, list(bundle.inclusion_proof),
                            checkpoint.root_hash)
    return None, f"leaf {bundle.leaf_index} of {bundle.tree_size} is in the checkpoint's root"


def _anchor(bundle: ProofBundle) -> tuple[None, str]:
    anchor = bundle.anchor
    assert anchor is not None
    digest = checkpoint_hash(bundle.checkpoint)
    if digest not in anchor.tx_input:
        raise VerificationError("the anchoring transaction does not carry this checkpoint's hash")
    return None, (f"checkpoint hash in transaction {anchor.tx_hash} "
                  f"(chain {anchor.chain_id}, block {anchor.block_number})")
