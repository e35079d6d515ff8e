"""Proof bundles: everything needed to check one record offline, in one JSON file.

A bundle holds a record's signed bytes, the device's enrolment key, every key-rotation
record of the device before the record (each with its leaf index and inclusion proof), the
record's leaf index and an inclusion proof into a tree of ``tree_size`` leaves, the
gateway's signed checkpoint of that size and the gateway's verifier key, and optionally the
anchor of that checkpoint on a chain. :func:`verify_bundle` checks all of it with no
network and returns a report of the checks that passed, or raises
:class:`VerificationError` naming the check that failed.

The key that signed the record is derived, never taken on trust (docs/PROTOCOL.md §3.3,
§15): the enrolment key must hash to the record's device id, each rotation record must be
signed by the key before it and be in the same checkpoint, and the record must verify under
the key the last rotation before it names.

The gateway's key in the bundle is only a claim: an auditor passes the key they trust
(``trusted_gateway_key``) and the bundle must match it.

A bundle may also carry the quality attestations (docs/PROTOCOL.md §20) whose verdicts name
the record's leaf, each proved in the same checkpoint: :func:`verify_bundle` checks each
signature, that it names this record of this device, and its inclusion, and reports the
verdicts. Whether to trust a validator's key is the reader's decision, as with the gateway's.

Version 1 bundles (``edgeproof-proof-bundle/1``, one ``device_public_key`` and no
rotations) are still read; one whose key is not the enrolment key fails, because nothing in
it proves that key was ever the device's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from protocol import merkle
from protocol.checkpoint import Checkpoint, checkpoint_hash
from protocol.documents import verify_document
from protocol.errors import EdgeproofError, MalformedRecord, VerificationError
from protocol.jsontext import parse_json
from protocol.keys import DEVICE_ID_BYTES, device_id_for
from protocol.note import NoteVerifier
from protocol.quality import QUALITY, QualityAttestation
from protocol.record import KeyRotation
from protocol.signed import SignedRecord, parse_signed_record, verify_signed_record

T = TypeVar("T")
BUNDLE_FORMAT = "edgeproof-proof-bundle/2"
BUNDLE_FORMAT_V1 = "edgeproof-proof-bundle/1"
MAX_BUNDLE_BYTES = 1024 * 1024
MAX_PROOF_NODES = 64
MAX_ROTATIONS = 128
MAX_ATTESTATIONS = 64
PUBLIC_KEY_BYTES = 32  # Ed25519


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
class RotationProof:
    """A logged key-rotation record of the device and its inclusion proof."""

    record: bytes
    leaf_index: int
    inclusion_proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"record": self.record.hex(), "leaf_index": self.leaf_index,
                "inclusion_proof": [node.hex() for node in self.inclusion_proof]}


@dataclass(frozen=True)
class AttestationProof:
    """A logged quality attestation naming the record, and its inclusion proof."""

    document: bytes
    leaf_index: int
    inclusion_proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"document": self.document.hex(), "leaf_index": self.leaf_index,
                "inclusion_proof": [node.hex() for node in self.inclusion_proof]}


@dataclass(frozen=True)
class ProofBundle:
    """One record with its inclusion proof, checkpoint and (optional) anchor.

    ``device_public_key`` is the device's enrolment key (in a version 1 bundle: the key
    that signed the record); ``rotations`` are the device's key-rotation records with a
    smaller seq than the record's, in seq order, proved against the same checkpoint.
    """

    record: bytes
    device_public_key: bytes
    leaf_index: int
    tree_size: int
    inclusion_proof: tuple[bytes, ...]
    checkpoint: str
    gateway_key: str
    anchor: EthereumAnchor | None = None
    rotations: tuple[RotationProof, ...] = ()
    version: int = 2
    attestations: tuple[AttestationProof, ...] = ()

    def to_json(self) -> str:
        """Return the bundle as JSON text (hex for bytes), in the current format; the
        ``attestations`` member only when there are some (older readers ignore it)."""
        more = {"attestations": [a.to_json() for a in self.attestations]} \
            if self.attestations else {}
        return json.dumps({
            "format": BUNDLE_FORMAT,
            "record": self.record.hex(),
            "device_public_key": self.device_public_key.hex(),
            "rotations": [r.to_json() for r in self.rotations],
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "inclusion_proof": [node.hex() for node in self.inclusion_proof],
            "checkpoint": self.checkpoint,
            "gateway_key": self.gateway_key,
            "anchor": self.anchor.to_json() if self.anchor else None,
            **more,
        }, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> ProofBundle:
        """Parse bundle JSON; raise MalformedRecord("bad_bundle") naming what is wrong."""
        if len(text) > MAX_BUNDLE_BYTES:
            raise MalformedRecord("bad_bundle", f"bundle larger than {MAX_BUNDLE_BYTES} bytes")
        data = json_document(text)
        formats = {BUNDLE_FORMAT: 2, BUNDLE_FORMAT_V1: 1}
        if not isinstance(data, dict) or data.get("format") not in formats:
            raise MalformedRecord("bad_bundle", f"format must be {BUNDLE_FORMAT!r} "
                                  f"(or {BUNDLE_FORMAT_V1!r})")
        version = formats[data["format"]]
        rotations: tuple[RotationProof, ...] = ()
        if version >= 2:
            items = json_field(data, "rotations", list)
            if len(items) > MAX_ROTATIONS:
                raise MalformedRecord("bad_bundle", f"more than {MAX_ROTATIONS} rotations")
            rotations = tuple(_rotation_from(item) for item in items)
        anchor = data.get("anchor")
        items = data.get("attestations", [])
        if not isinstance(items, list) or len(items) > MAX_ATTESTATIONS:
            raise MalformedRecord("bad_bundle", f"attestations: a list of at most "
                                  f"{MAX_ATTESTATIONS}")
        return cls(
            record=json_hex(json_field(data, "record", str), "record"),
            device_public_key=json_hex(json_field(data, "device_public_key", str),
                                       "device_public_key", PUBLIC_KEY_BYTES),
            leaf_index=json_field(data, "leaf_index", int),
            tree_size=json_field(data, "tree_size", int),
            inclusion_proof=json_proof(data, "inclusion_proof"),
            checkpoint=json_field(data, "checkpoint", str),
            gateway_key=json_field(data, "gateway_key", str),
            anchor=_anchor_from(anchor) if anchor is not None else None,
            rotations=rotations,
            version=version,
            attestations=tuple(_attestation_from(item) for item in items),
        )


def json_document(text: str | bytes) -> Any:
    """Parse JSON text; MalformedRecord("bad_bundle", "not JSON") for anything that is not,
    including hostile input (bytes in no UTF encoding, nesting too deep: :func:`parse_json`)."""
    try:
        return parse_json(text)
    except ValueError:  # also UnicodeDecodeError
        raise MalformedRecord("bad_bundle", "not JSON") from None


def json_proof(data: dict[str, Any], name: str) -> tuple[bytes, ...]:
    """An inclusion proof: a list of at most MAX_PROOF_NODES hex hashes."""
    proof = json_field(data, name, list)
    if len(proof) > MAX_PROOF_NODES:
        raise MalformedRecord("bad_bundle", f"{name} too long")
    return tuple(json_hex(node, name) for node in proof)


def _rotation_from(data: object) -> RotationProof:
    if not isinstance(data, dict):
        raise MalformedRecord("bad_bundle", "each rotation must be an object")
    return RotationProof(record=json_hex(json_field(data, "record", str), "rotation record"),
                         leaf_index=json_field(data, "leaf_index", int),
                         inclusion_proof=json_proof(data, "inclusion_proof"))


def _attestation_from(data: object) -> AttestationProof:
    if not isinstance(data, dict):
        raise MalformedRecord("bad_bundle", "each attestation must be an object")
    return AttestationProof(document=json_hex(json_field(data, "document", str),
                                              "attestation"),
                            leaf_index=json_field(data, "leaf_index", int),
                            inclusion_proof=json_proof(data, "inclusion_proof"))


def json_field(data: dict[str, Any], name: str, kind: type) -> Any:
    """``data[name]`` if it is a ``kind`` (never a bool); MalformedRecord("bad_bundle")."""
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedRecord("bad_bundle", f"{name} must be a {kind.__name__}")
    return value


def json_hex(value: object, name: str, length: int | None = None) -> bytes:
    """Hex text as bytes (of exactly ``length`` bytes, if given); MalformedRecord("bad_bundle")
    naming ``name`` otherwise."""
    if not isinstance(value, str):
        raise MalformedRecord("bad_bundle", f"{name} must be hex text")
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise MalformedRecord("bad_bundle", f"{name} is not hex") from None
    if length is not None and len(raw) != length:
        raise MalformedRecord("bad_bundle", f"{name} must be {length} bytes ({2 * length} hex "
                              f"digits), not {len(raw)}")
    return raw


def _anchor_from(data: object) -> EthereumAnchor:
    if not isinstance(data, dict) or data.get("type") != "ethereum":
        raise MalformedRecord("bad_bundle", "anchor must be null or of type 'ethereum'")
    return EthereumAnchor(
        chain_id=json_field(data, "chain_id", int),
        tx_hash=json_field(data, "tx_hash", str),
        block_number=json_field(data, "block_number", int),
        tx_input=json_hex(json_field(data, "tx_input", str), "tx_input"),
    )


@dataclass
class BundleReport:
    """The checks that passed, in order, each with a one-line detail."""

    passed: list[tuple[str, str]] = field(default_factory=list)
    record: SignedRecord | None = None
    checkpoint: Checkpoint | None = None
    verdicts: list[dict[str, Any]] = field(default_factory=list)


def verify_bundle(bundle: ProofBundle, trusted_gateway_key: str | None = None) -> BundleReport:
    """Check every part of a bundle offline.

    Returns the report of passed checks. Raises VerificationError whose message starts
    with the name of the failed check: ``gateway key``, ``record signature``,
    ``checkpoint signature``, ``inclusion proof``, ``quality attestations`` or ``anchor``.
    """
    report = BundleReport()
    _check(report, "gateway key", lambda: _gateway_key(bundle, trusted_gateway_key))
    report.record = _check(report, "record signature", lambda: _record(bundle))
    report.checkpoint = _check(report, "checkpoint signature", lambda: _checkpoint(bundle))
    _check(report, "inclusion proof", lambda: _inclusion(bundle, report.checkpoint))
    if bundle.attestations:
        report.verdicts = _check(report, "quality attestations",
                                 lambda: _attestations(bundle, report))
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


def key_in_force(enrolment_key: bytes, rotations: Sequence[bytes], device_id: bytes,
                 seq: int) -> tuple[bytes, int | None]:
    """The device key that signs record ``seq`` (docs/PROTOCOL.md §3.3), and the seq of the
    rotation that named it (None: the enrolment key).

    ``rotations`` are the signed bytes of every key-rotation record of the device with a
    seq below ``seq``, in seq order. The enrolment key must hash to ``device_id``; each
    rotation must be the device's, signed by the key in force at its seq; the key a rotation
    at seq ``r`` names signs every record after ``r``. Raises VerificationError otherwise
    (MalformedRecord ``bad_key`` / ``bad_device_id`` for a key or id of the wrong length).
    A verifier cannot see a rotation the list leaves out; the record's signature then fails.
    """
    if len(enrolment_key) != PUBLIC_KEY_BYTES:
        raise MalformedRecord("bad_key", f"the device key must be {PUBLIC_KEY_BYTES} bytes, "
                              f"not {len(enrolment_key)}")
    if len(device_id) != DEVICE_ID_BYTES:
        raise MalformedRecord("bad_device_id", f"the device id must be {DEVICE_ID_BYTES} "
                              f"bytes, not {len(device_id)}")
    if device_id_for(enrolment_key) != device_id:
        raise VerificationError("the device key in the bundle is not the device's enrolment "
                                "key (its device id differs)")
    key, since, last_seq = enrolment_key, None, -1
    for raw in rotations:
        rotation = verify_signed_record(raw, key, device_id)
        body, rseq = rotation.record.body, rotation.record.seq
        if not isinstance(body, KeyRotation):
            raise VerificationError(f"the record at seq {rseq} given as a rotation is not one")
        if not last_seq < rseq < seq:
            raise VerificationError(f"rotation at seq {rseq} out of order (rotations must be "
                                    f"in increasing seq order, before seq {seq})")
        key, since, last_seq = body.new_public_key, rseq, rseq
    return key, since


def _record(bundle: ProofBundle) -> tuple[SignedRecord, str]:
    message, record = parse_signed_record(bundle.record)
    if len(bundle.device_public_key) != PUBLIC_KEY_BYTES:  # before hashing it (§3.3)
        raise MalformedRecord("bad_key", f"the bundle's device key is "
                              f"{len(bundle.device_public_key)} bytes, not {PUBLIC_KEY_BYTES}")
    if bundle.version == 1 and device_id_for(bundle.device_public_key) != message.kid:
        raise VerificationError("version 1 bundle of a record signed with a rotated key: "
                                "nothing proves the key is the device's; save the bundle "
                                "again")
    try:
        key, since = key_in_force(bundle.device_public_key,
                                  [r.record for r in bundle.rotations], message.kid, record.seq)
    except VerificationError as exc:
        raise VerificationError(f"device key: {exc}") from exc
    signed = verify_signed_record(bundle.record, key, message.kid)
    note = "its enrolment key" if since is None else \
        f"the key its rotation at seq {since} named ({len(bundle.rotations)} rotation(s) checked)"
    return signed, (f"device {signed.device_id.hex()} seq {record.seq} stream "
                    f"{record.stream!r}, signed with {note}")


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
    for rotation in bundle.rotations:
        try:
            merkle.verify_inclusion(merkle.leaf_hash(rotation.record), rotation.leaf_index,
                                    bundle.tree_size, list(rotation.inclusion_proof),
                                    checkpoint.root_hash)
        except VerificationError as exc:
            raise VerificationError(f"rotation at leaf {rotation.leaf_index}: {exc}") from exc
    rotations = f", with {len(bundle.rotations)} key rotation(s)" if bundle.rotations else ""
    return None, (f"leaf {bundle.leaf_index} of {bundle.tree_size}{rotations} "
                  "in the checkpoint's root")


def _anchor(bundle: ProofBundle) -> tuple[None, str]:
    anchor = bundle.anchor
    assert anchor is not None
    digest = checkpoint_hash(bundle.checkpoint)
    if digest not in anchor.tx_input:
        raise VerificationError("the anchoring transaction does not carry this checkpoint's hash")
    return None, (f"checkpoint hash in transaction {anchor.tx_hash} "
                  f"(chain {anchor.chain_id}, block {anchor.block_number})")


def _attestations(bundle: ProofBundle, report: BundleReport
                  ) -> tuple[list[dict[str, Any]], str]:
    assert report.record is not None
    assert report.checkpoint is not None
    device_id = report.record.device_id
    verdicts: list[dict[str, Any]] = []
    lines: list[str] = []
    for proof in bundle.attestations:
        doc = verify_document(proof.document, expected_type=QUALITY)
        assert isinstance(doc.body, QualityAttestation)
        body = doc.body
        try:
            sensor = body.of(device_id)
        except KeyError:
            raise VerificationError(f"attestation at leaf {proof.leaf_index} does not name "
                                    "this record's device") from None
        if bundle.leaf_index not in sensor.leaves:
            raise VerificationError(f"attestation at leaf {proof.leaf_index} does not name "
                                    "this record")
        merkle.verify_inclusion(merkle.leaf_hash(proof.document), proof.leaf_index,
                                bundle.tree_size, list(proof.inclusion_proof),
                                report.checkpoint.root_hash)
        verdicts.append({"site": body.site, "field": f"{body.stream}/{body.field}",
                         "window_start_ms": body.window_start_ms, "window_ms": body.window_ms,
                         "state": sensor.state, "reasons": list(sensor.reasons),
                         "consensus": None if body.consensus is None else
                         str(body.consensus.value), "validator": doc.signer_id.hex(),
                         "leaf_index": proof.leaf_index})
        why = f" ({', '.join(sensor.reasons)})" if sensor.reasons else ""
        lines.append(f"{body.site} {sensor.state}{why} by validator "
                     f"{doc.signer_id.hex()[:16]} (leaf {proof.leaf_index})")
    return verdicts, "; ".join(lines)
