"""Reading and making contract documents on the client side (PROTOCOL.md §16).

Shared by ``edgeproof-verify`` (a recipient signs and submits a request; anyone checks a
document) and ``edgeproof-owner`` (an owner consents and revokes): how a document is shown,
how times and stream/field arguments are read from a command line.
"""

from __future__ import annotations

from datetime import UTC, datetime

from protocol.contract import Consent, DataRequest, Lapse, Revocation, Streams
from protocol.documents import Document, verify_document
from protocol.errors import ConfigError, VerificationError
from verifier.records import wall_time


def parse_time_ms(text: str) -> int:
    """A time given as ms since the epoch or ISO 8601 (UTC if no zone); ConfigError if not."""
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"time {text!r}: give ms since the epoch or ISO 8601") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def parse_streams(items: list[str]) -> Streams:
    """``STREAM:FIELD[,FIELD...]`` arguments (repeatable) as the sorted streams of a document."""
    out: dict[str, set[str]] = {}
    for item in items:
        stream, sep, fields = item.partition(":")
        names = {f for f in fields.split(",") if f}
        if not sep or not stream or not names:
            raise ConfigError(f"--field {item!r}: give STREAM:FIELD[,FIELD...], "
                              "e.g. climate:Cel")
        out.setdefault(stream, set()).update(names)
    return tuple(sorted((s, tuple(sorted(f))) for s, f in out.items()))


def parse_hex(text: str, length: int, what: str) -> bytes:
    """``length`` bytes given as hex (a key, an id); ConfigError naming ``what`` if not."""
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != length:
        raise ConfigError(f"{what} {text!r}: give {2 * length} hex digits")
    return value


def parse_device_ids(items: list[str]) -> tuple[bytes, ...]:
    """Device ids (32 hex digits each), sorted and without duplicates."""
    return tuple(sorted({parse_hex(item, 16, "device id") for item in items}))


def describe(doc: Document, index: int | None = None) -> dict[str, object]:
    """A document as plain JSON-able values (times also as ISO 8601 UTC)."""
    out: dict[str, object] = {"type": doc.type, "id": doc.id.hex(),
                              "signer_id": doc.signer_id.hex(), "issued": wall_time(doc.issued_ms)}
    if index is not None:
        out["index"] = index
    body = doc.body
    if isinstance(body, DataRequest | Consent):
        t = body.terms
        out.update(recipient=body.recipient.hex(), devices=[d.hex() for d in body.devices],
                   streams={s: list(f) for s, f in t.streams},
                   min_interval_s=t.min_interval_s, not_before=wall_time(t.not_before_ms),
                   not_after=wall_time(t.not_after_ms))
    if isinstance(body, DataRequest):
        out.update(owners=[o.hex() for o in body.owners], purpose=body.purpose,
                   reward_micro_per_hour=body.reward_micro_per_hour)
    elif isinstance(body, Consent):
        out["request"] = body.request.hex()
        if body.lapses_on_shortfall:
            out["lapses_on_shortfall"] = True
    elif isinstance(body, Revocation):
        out.update(consent=body.consent.hex(), counter=body.counter, reason=body.reason)
    elif isinstance(body, Lapse):
        consent = lapsed_consent(body)
        out.update(consent=consent.id.hex(), consent_signer_id=consent.signer_id.hex(),
                   request=body.request.hex(), short_at=body.short_at,
                   funding_block=body.funding_block, chain_id=body.chain_id,
                   distributor="0x" + body.distributor.hex())
    return out


def lapsed_consent(lapse: Lapse) -> Document:
    """The consent a lapse notice embeds, verified (its own signature), with the owner's
    ``lapses_on_shortfall`` term and the notice's request; else VerificationError. Whether
    the request was short is checked against the chain by ``edgeproof-verify payout``."""
    consent = verify_document(lapse.consent, expected_type="consent")
    body = consent.body
    if not isinstance(body, Consent) or not body.lapses_on_shortfall:
        raise VerificationError("the lapse notice ends a consent whose owner did not allow it")
    if body.request != lapse.request:
        raise VerificationError("the lapse notice names another request than its consent")
    return consent


def as_text(info: dict[str, object]) -> str:
    """A described document as one line of ``key=value`` pairs."""
    parts = []
    for key, value in info.items():
        shown = value
        if isinstance(value, dict):
            shown = ";".join(f"{k}:{','.join(v)}" for k, v in value.items())
        elif isinstance(value, list):
            shown = ",".join(str(v) for v in value) or "-"
        parts.append(f"{key}={shown}")
    return "  ".join(parts)
