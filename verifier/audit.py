"""``edgeproof-verify audit``: build an audit bundle from a gateway, and show an audit.

Building (:func:`build_audit`) reads the gateway's public API: the device's enrolment key
and pinned owner key, its consents and revocations and the requests they answer, its key
epochs (the one in force at the start of the range and every one up to its end) and the
key rotations before them, the latest checkpoint, and one inclusion proof per leaf. Nothing
fetched is trusted: :func:`protocol.audit.verify_audit` checks it all, and works the same
offline from the saved bundle.
"""

from __future__ import annotations

from typing import Any, TextIO

from protocol.audit import LEAF_KINDS, Audit, AuditBundle, GrantStory, ProvedLeaf
from protocol.checkpoint import Checkpoint
from protocol.contract import CONSENT, Consent, Lapse, Revocation, body_of
from protocol.documents import parse_document
from protocol.errors import EdgeproofError
from protocol.keys import recipient_kid
from protocol.note import NoteVerifier
from protocol.record import KeyEpoch, KeyRotation
from protocol.signed import parse_signed_record
from verifier.client import DocumentClient
from verifier.records import wall_time


class NotCovered(EdgeproofError):
    """A leaf the audit needs is logged after the latest checkpoint: try again later."""


def build_audit(client: DocumentClient, device_id: bytes, from_ms: int, to_ms: int,
                gateway_key: str) -> AuditBundle:
    """Fetch everything an audit of ``device_id`` over [from_ms, to_ms) rests on."""
    keys = client.device_keys(device_id)
    note = client.checkpoint()
    size = Checkpoint.from_note(note, NoteVerifier.from_text(gateway_key)).size
    wanted: list[tuple[str, int, bytes]] = []
    for logged in client.device_documents(device_id):
        doc = parse_document(logged.raw)
        if doc.type not in LEAF_KINDS:
            continue  # a quality attestation: not part of who could read what
        wanted.append((doc.type, logged.index, logged.raw))
        if doc.type == CONSENT:
            request = client.document(body_of(doc, Consent).request)
            wanted.append(("request", request.index, request.raw))
    records = client.all_device_records(device_id)
    epochs = [(r.index, r.record) for r in records
              if isinstance(parse_signed_record(r.record)[1].body, KeyEpoch)]
    walls = [parse_signed_record(raw)[1].wall_ms for _, raw in epochs]
    first = max([i for i, w in enumerate(walls) if w <= from_ms], default=0)
    chosen = [e for i, (e, w) in enumerate(zip(epochs, walls, strict=True))
              if i >= first and w < to_ms]
    last_seq = max((parse_signed_record(raw)[1].seq for _, raw in chosen), default=-1)
    wanted += [("key_epoch", index, raw) for index, raw in chosen]
    wanted += [("rotation", r.index, r.record) for r in records if r.seq < last_seq
               and isinstance(parse_signed_record(r.record)[1].body, KeyRotation)]
    late = [index for _, index, _ in wanted if index >= size]
    if late:
        raise NotCovered(f"leaf {min(late)} is not covered by the latest checkpoint (size "
                         f"{size}) yet; try again after the next checkpoint")
    unique = {index: (kind, raw) for kind, index, raw in wanted}
    leaves = tuple(ProvedLeaf(kind, index, raw, tuple(client.inclusion_proof(index, size)))
                   for index, (kind, raw) in sorted(unique.items()))
    return AuditBundle(device_id, keys[0][1], client.owner_key(device_id), from_ms, to_ms,
                       size, note, gateway_key, leaves)


def _in_range(audit: Audit, story: GrantStory) -> bool:
    terms = story.body.terms
    return terms.not_before_ms < audit.to_ms and terms.not_after_ms > audit.from_ms


def _story(audit: Audit, story: GrantStory) -> dict[str, object]:
    consent = story.body
    terms = consent.terms
    out: dict[str, object] = {
        "consent": story.consent.id.hex(), "consent_leaf": story.consent_leaf,
        "request": consent.request.hex(), "request_leaf": story.request_leaf,
        "recipient": consent.recipient.hex(), "recipient_kid": recipient_kid(
            consent.recipient).hex(),
        "fields": {s: list(f) for s, f in terms.streams}, "min_interval_s": terms.min_interval_s,
        "granted_from": wall_time(terms.not_before_ms),
        "granted_until": wall_time(terms.not_after_ms),
        "applied_by": [{"seq": e.seq, "wall_time": wall_time(e.wall_ms), "leaf": e.leaf_index,
                        "clock_synced": e.clock_synced, "stream": e.derived_stream}
                       for e in story.epochs if e.wall_ms < audit.to_ms],
    }
    dropped = _dropped_by(audit, story)
    if dropped is not None:
        out["dropped_by"] = dropped
    if story.revocation is not None and isinstance(story.revocation.body, Lapse):
        lapse = story.revocation.body
        out["ended"] = {"by": "lapse", "leaf": story.revocation_leaf,
                        "short_at": lapse.short_at, "funding_block": lapse.funding_block,
                        "signed": wall_time(story.revocation.issued_ms)}
    elif story.revocation is not None:
        revocation = body_of(story.revocation, Revocation)
        out["ended"] = {"by": "revocation", "leaf": story.revocation_leaf,
                        "counter": revocation.counter, "reason": revocation.reason,
                        "signed": wall_time(story.revocation.issued_ms)}
    elif terms.not_after_ms <= audit.to_ms:
        out["ended"] = {"by": "expiry", "at": wall_time(terms.not_after_ms)}
    else:
        out["ended"] = {"by": "not ended", "as_of_tree_size": audit.checkpoint.size}
    return out


def _dropped_by(audit: Audit, story: GrantStory) -> dict[str, object] | None:
    """The first key epoch after the last one applying the consent that no longer does:
    from it on the device sealed nothing more to that grant."""
    if not story.epochs:
        return None
    last = max(e.seq for e in story.epochs)
    for leaf, record in audit.epochs:
        body = record.body
        if record.seq > last and isinstance(body, KeyEpoch) and story.consent.id not in {
                c for _, c in body.consents}:
            return {"seq": record.seq, "wall_time": wall_time(record.wall_ms), "leaf": leaf}
    return None


def audit_json(audit: Audit) -> dict[str, object]:
    """The audit as plain JSON-able values."""
    return {
        "device_id": audit.device_id.hex(), "from": wall_time(audit.from_ms),
        "to": wall_time(audit.to_ms), "tree_size": audit.checkpoint.size,
        "checks": [{"check": name, "detail": detail} for name, detail in audit.passed],
        "key_epochs": [{"seq": r.seq, "leaf": leaf, "wall_time": wall_time(r.wall_ms),
                        "streams": {s: [g.recipient_kid.hex() for g in gs]
                                    for s, gs in r.body.grants}}
                       for leaf, r in audit.epochs if isinstance(r.body, KeyEpoch)],
        "grants": [_story(audit, s) for s in audit.grants if _in_range(audit, s)],
    }


def print_audit(audit: Audit, out: TextIO) -> None:
    """The audit as text: the checks, then who could read what, from which consent, until."""
    data = audit_json(audit)
    print(f"audit of device {data['device_id']} from {data['from']} to {data['to']} "
          f"(tree size {data['tree_size']})", file=out)
    for check in audit.passed:
        print(f"  ok  {check[0]}: {check[1]}", file=out)
    grants: list[dict[str, Any]] = data["grants"]  # type: ignore[assignment]
    if not grants:
        print("no consent for this device in the range: only the owner could decrypt",
              file=out)
    for g in grants:
        fields = "; ".join(f"{s}: {', '.join(f)}" for s, f in g["fields"].items())
        print(f"recipient {g['recipient_kid']} could decrypt {fields} (at most one reading "
              f"per {g['min_interval_s']} s), {g['granted_from']} to {g['granted_until']}",
              file=out)
        print(f"  from consent {g['consent'][:16]} (leaf {g['consent_leaf']}), answering "
              f"request {g['request'][:16]} (leaf {g['request_leaf']})", file=out)
        for e in g["applied_by"]:
            print(f"  applied by key epoch seq {e['seq']} at {e['wall_time']} (leaf "
                  f"{e['leaf']}, stream {e['stream']})", file=out)
        if "dropped_by" in g:
            d = g["dropped_by"]
            print(f"  dropped by key epoch seq {d['seq']} at {d['wall_time']} (leaf "
                  f"{d['leaf']}): nothing sealed to it after", file=out)
        ended = g["ended"]
        if ended["by"] == "revocation":
            print(f"  until revocation (leaf {ended['leaf']}, counter {ended['counter']}, "
                  f"{ended['reason']}) signed {ended['signed']}", file=out)
        elif ended["by"] == "lapse":
            print(f"  until it lapsed (gateway notice at leaf {ended['leaf']}: its request "
                  f"short at leaf {ended['short_at']}, funding block "
                  f"{ended['funding_block']}) signed {ended['signed']}", file=out)
        elif ended["by"] == "expiry":
            print(f"  until it expired at {ended['at']}", file=out)
        else:
            print(f"  still in force at tree size {ended['as_of_tree_size']}", file=out)

