"""Audit bundles: who could decrypt which fields of a device, when, and on whose word.

An audit bundle (docs/PROTOCOL.md §18) holds, for one device and a wall-time range, the
logged leaves an answer rests on, each with its inclusion proof into ONE signed checkpoint:
the consents naming the device and the requests they answer, the revocations of those
consents, the device's key epochs (which name the consents they apply, key 3) and its key
rotations. :func:`verify_audit` checks every leaf offline, every document's signature (the
consents and revocations under the owner key, which the auditor should pin), every key
epoch's signature under the device key in force, and that each derived stream is sealed
to its consent's recipient alone; it returns the :class:`Audit` timeline or raises
VerificationError naming what failed.

What it cannot show: a leaf the bundle leaves out. A key epoch left out would hide a
grant (the device's other records are not in the bundle), a revocation left out would show
a consent as still in force. The gateway's public log has them; an auditor who doubts a
bundle builds it again from the log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from protocol import merkle
from protocol.bundle import (
    PUBLIC_KEY_BYTES,
    json_document,
    json_field,
    json_hex,
    json_proof,
    key_in_force,
)
from protocol.checkpoint import Checkpoint
from protocol.contract import (
    CONSENT,
    LAPSE,
    REQUEST,
    REVOCATION,
    Consent,
    Revocation,
    body_of,
    check_consent,
    check_lapse,
)
from protocol.documents import Document, verify_document
from protocol.errors import MalformedRecord, RejectedDocument, VerificationError
from protocol.keys import DEVICE_ID_BYTES, device_id_for, recipient_kid
from protocol.note import NoteVerifier
from protocol.record import KeyEpoch, KeyRotation, Record
from protocol.signed import parse_signed_record, verify_signed_record

AUDIT_FORMAT = "edgeproof-audit-bundle/1"
MAX_AUDIT_BYTES = 8 * 1024 * 1024
MAX_LEAVES = 4096
LEAF_KINDS = ("request", "consent", "revocation", "lapse", "key_epoch", "rotation")


@dataclass(frozen=True)
class ProvedLeaf:
    """One logged leaf of the bundle: what it is, its bytes, where, and its proof."""

    kind: str
    leaf_index: int
    data: bytes
    inclusion_proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "leaf_index": self.leaf_index, "bytes": self.data.hex(),
                "inclusion_proof": [n.hex() for n in self.inclusion_proof]}


@dataclass(frozen=True)
class AuditBundle:
    """Everything :func:`verify_audit` needs, as one JSON file."""

    device_id: bytes
    device_public_key: bytes  # the enrolment key (hashes to the device id)
    owner_key: bytes  # the owner's Ed25519 key as the gateway registered it (a claim)
    from_ms: int
    to_ms: int
    tree_size: int
    checkpoint: str
    gateway_key: str
    leaves: tuple[ProvedLeaf, ...]

    def to_json(self) -> str:
        return json.dumps({
            "format": AUDIT_FORMAT, "device_id": self.device_id.hex(),
            "device_public_key": self.device_public_key.hex(), "owner_key": self.owner_key.hex(),
            "from_ms": self.from_ms, "to_ms": self.to_ms, "tree_size": self.tree_size,
            "checkpoint": self.checkpoint, "gateway_key": self.gateway_key,
            "leaves": [leaf.to_json() for leaf in self.leaves]}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> AuditBundle:
        """Parse audit bundle JSON; MalformedRecord("bad_bundle") naming what is wrong."""
        if len(text) > MAX_AUDIT_BYTES:
            raise MalformedRecord("bad_bundle", f"larger than {MAX_AUDIT_BYTES} bytes")
        data = json_document(text)
        if not isinstance(data, dict) or data.get("format") != AUDIT_FORMAT:
            raise MalformedRecord("bad_bundle", f"format must be {AUDIT_FORMAT!r}")
        leaves = data.get("leaves")
        if not isinstance(leaves, list) or len(leaves) > MAX_LEAVES:
            raise MalformedRecord("bad_bundle", f"leaves: a list of at most {MAX_LEAVES}")
        return cls(_hex(data, "device_id", DEVICE_ID_BYTES),
                   _hex(data, "device_public_key", PUBLIC_KEY_BYTES),
                   _hex(data, "owner_key", PUBLIC_KEY_BYTES), _int(data, "from_ms"),
                   _int(data, "to_ms"), _int(data, "tree_size"), _str(data, "checkpoint"),
                   _str(data, "gateway_key"), tuple(_leaf(x) for x in leaves))


def _leaf(item: object) -> ProvedLeaf:
    if not isinstance(item, dict) or item.get("kind") not in LEAF_KINDS:
        raise MalformedRecord("bad_bundle", f"a leaf is an object of kind {LEAF_KINDS}")
    return ProvedLeaf(str(item["kind"]), _int(item, "leaf_index"),
                      json_hex(item.get("bytes"), "bytes"), json_proof(item, "inclusion_proof"))


def _hex(data: dict[str, Any], name: str, length: int) -> bytes:
    return json_hex(data.get(name), name, length)


def _str(data: dict[str, Any], name: str) -> str:
    value: str = json_field(data, name, str)
    return value


def _int(data: dict[str, Any], name: str) -> int:
    value: int = json_field(data, name, int)
    if value < 0:
        raise MalformedRecord("bad_bundle", f"{name} must not be negative")
    return value


# --- the answer --------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochUse:
    """A key epoch that sealed a consent's derived stream to its recipient."""

    seq: int
    wall_ms: int
    clock_synced: bool
    leaf_index: int
    derived_stream: str


@dataclass
class GrantStory:
    """One consent: what it granted, which key epochs applied it, what ended it."""

    consent: Document
    consent_leaf: int
    request_leaf: int
    epochs: list[EpochUse] = field(default_factory=list)
    revocation: Document | None = None
    revocation_leaf: int | None = None

    @property
    def body(self) -> Consent:
        return body_of(self.consent, Consent)


@dataclass
class Audit:
    """The verified answer: the checks that passed and one story per consent."""

    device_id: bytes
    from_ms: int
    to_ms: int
    checkpoint: Checkpoint
    passed: list[tuple[str, str]]
    grants: list[GrantStory]
    epochs: list[tuple[int, Record]]  # (leaf, key epoch record) in the range, seq order


def verify_audit(bundle: AuditBundle, trusted_gateway_key: str | None = None,
                 trusted_owner_key: bytes | None = None) -> Audit:
    """Check an audit bundle offline; return the timeline or raise VerificationError."""
    _check_identity(bundle)
    passed: list[tuple[str, str]] = []
    if trusted_gateway_key is not None and trusted_gateway_key.strip() != \
            bundle.gateway_key.strip():
        raise VerificationError("gateway key: the bundle names another key than the trusted one")
    passed.append(("gateway key", "matches the trusted key" if trusted_gateway_key
                   else "taken from the bundle (not independently trusted)"))
    if trusted_owner_key is not None and trusted_owner_key != bundle.owner_key:
        raise VerificationError("owner key: the bundle names another owner than the trusted one")
    passed.append(("owner key", "matches the trusted key" if trusted_owner_key
                   else "taken from the bundle (not independently trusted)"))
    checkpoint = Checkpoint.from_note(bundle.checkpoint, NoteVerifier.from_text(
        bundle.gateway_key))
    if checkpoint.size != bundle.tree_size:
        raise VerificationError(f"checkpoint: size {checkpoint.size}, bundle {bundle.tree_size}")
    passed.append(("checkpoint signature", f"{checkpoint.origin} size {checkpoint.size}"))
    for leaf in bundle.leaves:
        try:
            merkle.verify_inclusion(merkle.leaf_hash(leaf.data), leaf.leaf_index,
                                    bundle.tree_size, list(leaf.inclusion_proof),
                                    checkpoint.root_hash)
        except VerificationError as exc:
            raise VerificationError(f"inclusion proof of leaf {leaf.leaf_index}: {exc}") from exc
    passed.append(("inclusion proofs", f"{len(bundle.leaves)} leaves in the checkpoint's root"))
    grants = _documents(bundle, passed)
    epochs = _epochs(bundle, grants, passed)
    return Audit(bundle.device_id, bundle.from_ms, bundle.to_ms, checkpoint, passed,
                 sorted(grants.values(), key=lambda g: g.consent_leaf), epochs)


def _check_identity(bundle: AuditBundle) -> None:
    """Fail closed unless the bundle's device id, enrolment key and owner key have their
    lengths and the enrolment key hashes to the device id (docs/PROTOCOL.md §3.3): checked
    first, whatever leaves the bundle holds (with no key epoch nothing else would)."""
    if len(bundle.device_id) != DEVICE_ID_BYTES:
        raise MalformedRecord("bad_bundle", f"device id: {DEVICE_ID_BYTES} bytes expected, "
                              f"the bundle has {len(bundle.device_id)}")
    if len(bundle.device_public_key) != PUBLIC_KEY_BYTES:
        raise MalformedRecord("bad_bundle", f"device key: {PUBLIC_KEY_BYTES} bytes expected, "
                              f"the bundle has {len(bundle.device_public_key)}")
    if len(bundle.owner_key) != PUBLIC_KEY_BYTES:
        raise MalformedRecord("bad_bundle", f"owner key: {PUBLIC_KEY_BYTES} bytes expected, "
                              f"the bundle has {len(bundle.owner_key)}")
    if device_id_for(bundle.device_public_key) != bundle.device_id:
        raise VerificationError("device key: the bundle's device key is not the enrolment key "
                                "of its device (it hashes to another device id)")


def _of_kind(bundle: AuditBundle, kind: str) -> list[ProvedLeaf]:
    return sorted((x for x in bundle.leaves if x.kind == kind), key=lambda x: x.leaf_index)


def _documents(bundle: AuditBundle, passed: list[tuple[str, str]]) -> dict[bytes, GrantStory]:
    requests: dict[bytes, tuple[int, Document]] = {}
    for leaf in _of_kind(bundle, "request"):
        doc = verify_document(leaf.data, expected_type=REQUEST)
        requests[doc.id] = (leaf.leaf_index, doc)
    grants: dict[bytes, GrantStory] = {}
    for leaf in _of_kind(bundle, "consent"):
        try:
            doc = verify_document(leaf.data, bundle.owner_key, CONSENT)
        except VerificationError as exc:
            raise VerificationError(f"consent at leaf {leaf.leaf_index}: {exc}") from exc
        consent = body_of(doc, Consent)
        if bundle.device_id not in consent.devices:
            raise VerificationError(f"consent at leaf {leaf.leaf_index} is not for the device")
        found = requests.get(consent.request)
        if found is None or found[0] > leaf.leaf_index:
            raise VerificationError(f"consent at leaf {leaf.leaf_index}: its request is not "
                                    "logged before it in the bundle")
        check_consent(doc, found[1], doc.issued_ms)
        grants[doc.id] = GrantStory(doc, leaf.leaf_index, found[0])
    last_counter = 0
    for leaf in _of_kind(bundle, "revocation"):
        doc = verify_document(leaf.data, bundle.owner_key, REVOCATION)
        revocation = body_of(doc, Revocation)
        story = grants.get(revocation.consent)
        if story is None or story.consent_leaf > leaf.leaf_index:
            raise VerificationError(f"revocation at leaf {leaf.leaf_index} names no earlier "
                                    "consent of the bundle")
        if revocation.counter <= last_counter:
            raise VerificationError(f"revocation at leaf {leaf.leaf_index}: counter "
                                    f"{revocation.counter} not above {last_counter}")
        last_counter = revocation.counter
        if story.revocation is None:
            story.revocation, story.revocation_leaf = doc, leaf.leaf_index
    _lapses(bundle, grants)
    revoked = sum(g.revocation is not None for g in grants.values())
    passed.append(("documents", f"{len(grants)} consent(s) signed by the owner key, each "
                   f"answering a logged request; {revoked} revoked"))
    return grants


def _lapses(bundle: AuditBundle, grants: dict[bytes, GrantStory]) -> None:
    """Lapse notices (§19.4) end their consents like revocations, if the gateway signed them
    and the owner's embedded consent allowed it."""
    gateway = NoteVerifier.from_text(bundle.gateway_key).public_key
    for leaf in _of_kind(bundle, "lapse"):
        doc = verify_document(leaf.data, gateway, LAPSE)
        try:
            _, consent = check_lapse(doc, gateway, bundle.owner_key)
        except RejectedDocument as exc:
            raise VerificationError(f"lapse at leaf {leaf.leaf_index}: {exc}") from exc
        story = grants.get(consent.id)
        if story is None or story.consent_leaf > leaf.leaf_index:
            raise VerificationError(f"lapse at leaf {leaf.leaf_index} names no earlier "
                                    "consent of the bundle")
        if story.revocation_leaf is None or leaf.leaf_index < story.revocation_leaf:
            story.revocation, story.revocation_leaf = doc, leaf.leaf_index


def _epochs(bundle: AuditBundle, grants: dict[bytes, GrantStory],
            passed: list[tuple[str, str]]) -> list[tuple[int, Record]]:
    rotations = [leaf.data for leaf in _of_kind(bundle, "rotation")]
    rotation_seqs = [parse_signed_record(raw)[1].seq for raw in rotations]
    for raw in rotations:
        if not isinstance(parse_signed_record(raw)[1].body, KeyRotation):
            raise VerificationError("a leaf given as a rotation is not one")
    epochs: list[tuple[int, Record]] = []
    for leaf in _of_kind(bundle, "key_epoch"):
        seq = parse_signed_record(leaf.data)[1].seq
        before = [r for r, s in zip(rotations, rotation_seqs, strict=True) if s < seq]
        key, _ = key_in_force(bundle.device_public_key, before, bundle.device_id, seq)
        record = verify_signed_record(leaf.data, key, bundle.device_id).record
        if not isinstance(record.body, KeyEpoch):
            raise VerificationError(f"leaf {leaf.leaf_index} given as a key epoch is not one")
        _apply_epoch(leaf.leaf_index, record, grants)
        epochs.append((leaf.leaf_index, record))
    epochs.sort(key=lambda e: e[1].seq)
    passed.append(("key epochs", f"{len(epochs)} signed by the device; each derived stream "
                   "sealed to its consent's recipient only"))
    return epochs


def _apply_epoch(leaf_index: int, record: Record, grants: dict[bytes, GrantStory]) -> None:
    body = record.body
    assert isinstance(body, KeyEpoch)
    for stream, consent_id in body.consents:
        story = grants.get(consent_id)
        if story is None:
            raise VerificationError(f"key epoch seq {record.seq} applies a consent that is "
                                    "not in the bundle")
        kids = {g.recipient_kid for g in body.grants_for(stream)}
        if kids != {recipient_kid(story.body.recipient)}:
            raise VerificationError(f"key epoch seq {record.seq}: {stream} is sealed to "
                                    "others than the consent's recipient")
        story.epochs.append(EpochUse(record.seq, record.wall_ms, record.clock_synced,
                                     leaf_index, stream))
