"""Field- and rate-limited access: what a device does with an owner's consent.

A consent (signed by the device's owner) lets one recipient read some fields of one of the
device's streams, at most one reading per ``min_interval_ms``, between ``not_before_ms``
and ``not_after_ms``. The device enforces it with a *derived stream* per (consent,
stream): a second record, made from the same reading, that carries only the granted values
and is sealed (protocol.sealing) with a stream key wrapped for that recipient only; the
full stream stays sealed to the owner (and to nobody the owner did not consent to). The
key epoch that starts a derived stream names the consent it applies by hash
(``KeyEpoch.consents``), so anyone can tell from the log who could read what, and why.
PROTOCOL.md §5.5 gives the bytes and the reasoning (and what it costs per reading).

Pure functions and frozen types only: the agent decides *when* (clock, rate, revocation),
this module says *what* the bytes are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protocol.errors import MalformedRecord
from protocol.record import MAX_STREAM_CHARS, RESERVED_STREAMS, Measurement

DERIVED_SEPARATOR = "~"
CONSENT_TAG_BYTES = 6  # a derived stream names its consent by 12 hex digits
MAX_BASE_STREAM_CHARS = MAX_STREAM_CHARS - 1 - 2 * CONSENT_TAG_BYTES
MAX_FIELDS = 16


@dataclass(frozen=True)
class AccessGrant:
    """One consent as a device applies it to one of its streams.

    ``fields`` are the units (PROTOCOL.md §3.2) of the values the recipient may read, in
    the order the device sends them; ``recipient`` is the recipient's X25519 public key.
    Times are wall-clock ms since the Unix epoch; ``not_after_ms`` is exclusive.
    Raises MalformedRecord if a field is out of range.
    """

    consent_hash: bytes
    recipient: bytes
    stream: str
    fields: tuple[str, ...]
    min_interval_ms: int
    not_before_ms: int
    not_after_ms: int

    def __post_init__(self) -> None:
        if len(self.consent_hash) != 32 or len(self.recipient) != 32:
            raise MalformedRecord("bad_grant", "consent hash and recipient key are 32 bytes")
        if (not 1 <= len(self.stream) <= MAX_BASE_STREAM_CHARS
                or self.stream in RESERVED_STREAMS or DERIVED_SEPARATOR in self.stream):
            raise MalformedRecord("bad_grant", f"no derived stream for {self.stream!r}")
        if not 1 <= len(self.fields) <= MAX_FIELDS or len(set(self.fields)) != len(self.fields):
            raise MalformedRecord("bad_grant", f"1..{MAX_FIELDS} distinct fields")
        if self.min_interval_ms < 0 or not 0 <= self.not_before_ms < self.not_after_ms:
            raise MalformedRecord("bad_grant", "bad rate or period")

    @property
    def derived_stream(self) -> str:
        """The stream name of this grant's records."""
        return derived_stream(self.stream, self.consent_hash)

    def in_force(self, wall_ms: int, synced: bool) -> bool:
        """Whether the device may seal to this grant now.

        Only with a synchronised wall clock: a clock that may be wrong can prove neither
        that the period began nor that it has not ended, and must not extend access.
        """
        return synced and self.not_before_ms <= wall_ms < self.not_after_ms


def derived_stream(stream: str, consent_hash: bytes) -> str:
    """``<stream>~<first 6 bytes of the consent hash, hex>``, e.g. ``climate~1a2b3c4d5e6f``."""
    return f"{stream}{DERIVED_SEPARATOR}{consent_hash[:CONSENT_TAG_BYTES].hex()}"


def granted_values(values: Sequence[Measurement], fields: Iterable[str]
                   ) -> tuple[Measurement, ...]:
    """The values whose unit is among ``fields``, in their original order (maybe none)."""
    wanted = frozenset(fields)
    return tuple(v for v in values if v.unit in wanted)


def epoch_recipients(base: dict[str, tuple[bytes, ...]], grants: Iterable[AccessGrant]
                     ) -> tuple[dict[str, tuple[bytes, ...]], dict[str, bytes]]:
    """The recipients of a key epoch applying ``grants``, and the consents it names.

    ``base`` maps each full stream to its recipients (the owner's key at least). Each grant
    adds its derived stream, sealed for its recipient only. Returns (stream -> X25519
    public keys, derived stream -> consent hash).
    """
    recipients = dict(base)
    consents: dict[str, bytes] = {}
    for grant in grants:
        name = grant.derived_stream
        recipients[name] = (grant.recipient,)
        consents[name] = grant.consent_hash
    return recipients, consents
