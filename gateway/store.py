"""The log store interface: what the gateway needs from its database.

:class:`LogStore` is a :class:`typing.Protocol` so that a PostgreSQL store can replace the
SQLite one (:mod:`gateway.sqlite_store`) for a multi-worker deployment without touching the
sequencer, the checkpointer or the API. Three roles share one store:

- the *sequencer* (one thread, one writer of the log) opens :meth:`LogStore.transaction`,
  reads registry and log state and appends leaves inside it; everything one batch changes
  (leaves, tree nodes, dedup index, usage, gaps, keys, credit) commits atomically;
- the *registry* (the admin API) registers and revokes devices;
- *readers* (the public API, the checkpointer) read leaves, nodes, checkpoints, balances.

Every method raises :class:`~protocol.errors.StorageError` when the database fails;
registry conflicts raise :class:`DeviceExists` / :class:`DeviceNotFound`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum, unique
from typing import NamedTuple, Protocol

from protocol import merkle
from protocol.errors import ConfigError, StorageError


@unique
class DeviceStatus(StrEnum):
    """A registered device's standing; the value is what the store and the API hold."""

    ACTIVE = "active"
    REVOKED = "revoked"


STATUS_ACTIVE = DeviceStatus.ACTIVE
STATUS_REVOKED = DeviceStatus.REVOKED

# Leaf flags (bit set): facts about an accepted record worth keeping with it.
FLAG_CLOCK_UNSYNCED = 1  # the device said its wall clock was not synchronised

# Tree nodes: only perfect subtrees of 2**STORED_NODE_LEVEL leaves and more are stored (one
# row per 16 leaves instead of one per leaf: each row cost the sequencer about 3 to 7 µs and
# the disk 50 bytes). A smaller subtree's hash is computed from its leaves' bytes when a
# proof or the frontier asks for it (low_node_hash): at most 8 leaves read and hashed.
STORED_NODE_LEVEL = 4


def stored_nodes(completed: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """Of the subtrees one append completed (``CompactRange.append``, level 0 first, one
    per level), those the store keeps as rows."""
    return completed[STORED_NODE_LEVEL:]


def low_node_hash(level: int, raws: Sequence[bytes]) -> bytes | None:
    """The hash of the perfect subtree of ``2**level`` leaves (``level`` below
    STORED_NODE_LEVEL) whose exact bytes are ``raws`` in order; None if some are missing."""
    if len(raws) != 1 << level:
        return None
    return merkle.root([merkle.leaf_hash(raw) for raw in raws])


# Device flags.
DEVICE_EQUIVOCATED = 1  # the device signed two different records under one sequence number


class DeviceExists(ConfigError):
    """A device with this name or public key is already registered."""


class DeviceNotFound(ConfigError):
    """No device has this id."""


class RecipientExists(ConfigError):
    """A recipient with this name or signing key is already registered."""


class NotSequencer(StorageError):
    """This process does not hold the sequencer lock of a shared store (another one does,
    or its session ended): it must not append, sign or anchor (docs/SCALING.md)."""


@dataclass(frozen=True)
class PendingBatch:
    """A verified MQTT message that a non-sequencer process handed to the sequencer
    through a shared store (docs/SCALING.md, "Hand-over through the database")."""

    id: int
    topic: str
    payload: bytes  # b"" when the message was rejected whole before decoding
    payload_hash: bytes
    reject: str | None  # the reason code that rejected the whole message, if any
    verdicts: bytes  # per record: what the verifying process found (gateway.cluster)
    parsed: bytes | None = None  # per record: what it parsed (None: decode again)


@dataclass(frozen=True)
class KeyEntry:
    """A device key valid for records with ``seq >= from_seq`` (until the next entry)."""

    from_seq: int
    public_key: bytes


@dataclass(frozen=True)
class Device:
    """A registered device as the registry knows it."""

    device_id: bytes
    name: str
    owner: str
    rate_micro_per_hour: int
    status: DeviceStatus
    keys: tuple[KeyEntry, ...]  # ordered by from_seq; keys[0] is the enrolled key
    flags: int
    settled_micro: int
    registered_ms: int
    revoked_ms: int | None
    # The owner's Ed25519 and X25519 public keys pinned at enrolment (None: a device
    # enrolled before owners had keys; nobody can then consent for it).
    owner_key: bytes | None = None
    owner_sealing_key: bytes | None = None

    @property
    def enrolled_key(self) -> bytes:
        return self.keys[0].public_key

    @property
    def current_key(self) -> bytes:
        return self.keys[-1].public_key

    def key_for_seq(self, seq: int) -> bytes:
        """Return the key that signs record ``seq``: the last entry with from_seq <= seq."""
        chosen = self.keys[0].public_key
        for entry in self.keys:
            if entry.from_seq <= seq:
                chosen = entry.public_key
        return chosen


class NewLeaf(NamedTuple):
    """A verified record to append to the log.

    A NamedTuple rather than a frozen dataclass: one is built for every logged record on
    the sequencer's thread, and a tuple is built in a tenth of the time.
    """

    device_id: bytes
    seq: int
    record_hash: bytes  # SHA-256 of the exact signed bytes (the chain hash)
    prev: bytes  # the record's own prev field (kept to check the chain from either side)
    raw: bytes  # the exact signed bytes; the Merkle leaf is leaf_hash(raw)
    stream: str
    received_ms: int
    flags: int = 0


@dataclass(frozen=True)
class Leaf:
    """A logged record."""

    index: int
    device_id: bytes
    seq: int
    record_hash: bytes
    raw: bytes
    stream: str
    received_ms: int
    flags: int


@dataclass(frozen=True)
class LoggedLink:
    """Where a logged record sits and how it links: leaf index, its hash, its prev."""

    index: int
    record_hash: bytes
    prev: bytes


@dataclass(frozen=True)
class UsageEntry:
    """An accepted usage interval and the credit the gateway computed for it."""

    device_id: bytes
    seq: int
    boot: int
    start_mono_ms: int
    end_mono_ms: int
    usage_ms: int
    credit_micro: int


@dataclass(frozen=True)
class GapEntry:
    """Sequence numbers a device declared dropped, in the record at ``seq``."""

    device_id: bytes
    seq: int
    first_seq: int
    last_seq: int
    reason: str


@dataclass(frozen=True)
class NewDocument:
    """A verified, accepted signed document (request, consent, revocation) to log.

    It becomes a leaf like a record: ``leaf_hash(raw)`` in the same tree; the leaves table
    holds it under the signer id with seq ``-1 - index`` (no record has a negative seq) and
    stream ``document/<type>``.
    """

    doc_id: bytes  # SHA-256 of raw
    type: str
    signer: bytes  # Ed25519 public key
    raw: bytes
    ref: bytes | None  # the request a consent names, the consent a revocation names
    counter: int  # a revocation's counter; 0 otherwise
    devices: tuple[bytes, ...]  # the devices it concerns (delivered to them)
    received_ms: int


@dataclass(frozen=True)
class StoredDocument:
    """A logged document."""

    index: int
    doc_id: bytes
    type: str
    signer: bytes
    raw: bytes
    ref: bytes | None
    counter: int
    received_ms: int


@dataclass(frozen=True)
class RecipientEntry:
    """A registered data recipient: who may submit requests, and where data is sealed to."""

    name: str
    signing_key: bytes  # Ed25519: signs requests
    sealing_key: bytes  # X25519: devices seal to it
    registered_ms: int


@dataclass(frozen=True)
class StoredCheckpoint:
    """A signed checkpoint as persisted (before it is ever published)."""

    number: int  # 1, 2, 3, ... in issue order
    size: int
    root_hash: bytes
    note: str
    issued_ms: int
    balances: bytes  # the canonical balances table it commits to


@dataclass(frozen=True)
class Balance:
    """The settled credit of one owner, in micro-credits."""

    owner: str
    balance_micro: int


@dataclass(frozen=True)
class OwnerCredit:
    """One owner's settled credit and how many registered devices it has."""

    owner: str
    balance_micro: int
    devices: int


@dataclass(frozen=True)
class LastRecord:
    """A device's newest logged record: its seq and when the gateway received it."""

    seq: int
    received_ms: int


@dataclass(frozen=True)
class DeviceCounts:
    """How many devices are registered, revoked, and flagged for equivocation."""

    registered: int
    revoked: int
    equivocated: int


# The most rows one paged read returns (registry listings, owners, activity look-ups).
MAX_PAGE = 1000
# The largest integer a store column holds (SQLite INTEGER and PostgreSQL BIGINT are signed
# 64-bit): integers from outside are checked against it before any SQL sees them.
MAX_STORED_INT = (1 << 63) - 1
# Text from outside that a store keeps or compares: no C0 control characters or DEL.
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"


class LogTransaction(Protocol):
    """One batch's view of the store inside a single write transaction."""

    @property
    def size(self) -> int:
        """The number of leaves, including those appended in this transaction."""
        ...

    def device(self, device_id: bytes) -> Device | None:
        """Return the registered device, or None."""
        ...

    def links(self, device_id: bytes, first_seq: int, last_seq: int) -> dict[int, LoggedLink]:
        """Return ``{seq: link}`` for a device's logged records in [first_seq, last_seq]."""
        ...

    def key_in_use(self, public_key: bytes) -> bool:
        """Whether any device ever registered or rotated to ``public_key``."""
        ...

    def usage_overlaps(self, device_id: bytes, boot: int, start: int, end: int) -> bool:
        """Whether an accepted usage interval of that boot intersects ``[start, end)``.

        Accepted intervals of a boot never intersect one another, so only the one that
        starts last before ``end`` can: one index probe, however many a boot holds."""
        ...

    def owner_settled_micro(self, owner: str) -> int:
        """The settled credit of every device of ``owner``, as this transaction sees it."""
        ...

    def append(self, leaf: NewLeaf) -> int:
        """Append a leaf (and its tree nodes); return its index.

        The rows may be buffered until the transaction commits; a (device, seq) that is
        already logged makes the whole transaction fail with StorageError, so callers
        check :meth:`links` first.
        """
        ...

    def add_usage(self, usage: UsageEntry) -> None:
        """Record an accepted usage interval and add its credit to the device."""
        ...

    def add_gap(self, gap: GapEntry) -> None:
        """Record a declared gap."""
        ...

    def add_key(self, device_id: bytes, entry: KeyEntry) -> None:
        """Add a rotated key to the device's key history."""
        ...

    def add_equivocation(self, device_id: bytes, seq: int, raw: bytes, received_ms: int) -> None:
        """Keep the evidence of an equivocation and flag the device."""
        ...

    def equivocation_evidence(self, device_id: bytes) -> int:
        """How many equivocation records are kept as evidence for the device."""
        ...

    def document(self, doc_id: bytes) -> StoredDocument | None:
        """Return a logged document by id (including those appended in this transaction)."""
        ...

    def last_counter(self, signer: bytes) -> int:
        """The highest revocation counter logged for ``signer`` (0 if none)."""
        ...

    def document_by_ref(self, signer: bytes, doc_type: str, ref: bytes
                        ) -> StoredDocument | None:
        """The document of ``doc_type`` by ``signer`` with reference ``ref`` (a quality
        attestation's window slot), including this transaction's; None if none."""
        ...

    def device_streams(self, device_id: bytes) -> frozenset[str]:
        """The streams a device has logged records of (including this transaction's)."""
        ...

    def append_document(self, doc: NewDocument) -> int:
        """Append a document as a leaf (and index it); return its leaf index."""
        ...


class LogStore(Protocol):
    """The gateway's database: an append-only Merkle log plus registry and settlement."""

    def size(self) -> int:
        """The number of committed leaves."""
        ...

    def transaction(self) -> AbstractContextManager[LogTransaction]:
        """Open the single writer's transaction; commit on exit, roll back on error."""
        ...

    def get_node(self, level: int, index: int) -> bytes:
        """Return a stored perfect-subtree hash (a :class:`protocol.merkle.NodeReader`)."""
        ...

    def root(self, size: int) -> bytes:
        """Return the Merkle root of the first ``size`` leaves."""
        ...

    def leaf(self, index: int) -> Leaf | None:
        """Return the leaf at ``index``, or None."""
        ...

    def device_records(self, device_id: bytes, after_seq: int, limit: int) -> list[Leaf]:
        """Return a device's leaves with seq > after_seq in seq order, at most ``limit``."""
        ...

    def stream_leaves(self, stream: str | None, from_index: int, to_index: int,
                      limit: int) -> list[Leaf]:
        """Return the leaves of ``stream`` (None: every leaf) with ``from_index <= index <
        to_index`` in index order, at most ``limit`` (a range scan: cost bounded by the
        range)."""
        ...

    def device(self, device_id: bytes) -> Device | None:
        """Return the registered device, or None."""
        ...

    def devices(self, after_name: str = "", limit: int = MAX_PAGE) -> list[Device]:
        """Return registered devices named after ``after_name``, by name, at most ``limit``.

        Names compare by their UTF-8 bytes; the next page starts after the last name.
        """
        ...

    def owner_devices(self, owner_key: bytes, after_name: str = "",
                      limit: int = MAX_PAGE) -> list[Device]:
        """Return the devices pinned to ``owner_key`` named after ``after_name``, by name, at
        most ``limit`` (and MAX_PAGE).

        Names compare by their UTF-8 bytes; the next page starts after the last name. An
        index range scan on (owner key, name): the cost is the page's, not the registry's.
        """
        ...

    def last_records(self, device_ids: Sequence[bytes]) -> dict[bytes, LastRecord]:
        """Return the newest logged record of each device that has one (at most MAX_PAGE ids)."""
        ...

    def register_device(self, name: str, public_key: bytes, owner: str,
                        rate_micro_per_hour: int, now_ms: int, *,
                        owner_key: bytes | None = None,
                        owner_sealing_key: bytes | None = None) -> Device:
        """Register a device (pinning its owner's public keys, if given); raise DeviceExists
        if its name or key is taken."""
        ...

    def document(self, doc_id: bytes) -> StoredDocument | None:
        """Return a logged document by id, or None."""
        ...

    def documents(self, doc_type: str | None, after_index: int,
                  limit: int) -> list[StoredDocument]:
        """Return documents (of one type, or all) with index > after_index, in log order."""
        ...

    def device_documents(self, device_id: bytes, from_index: int,
                         limit: int) -> list[StoredDocument]:
        """Return the consents, revocations, quality attestations and lapse notices
        concerning a device with index >= from_index, in log order, at most ``limit``."""
        ...

    def register_recipient(self, name: str, signing_key: bytes, sealing_key: bytes,
                           now_ms: int) -> RecipientEntry:
        """Register a recipient; raise RecipientExists if its name or a key is taken."""
        ...

    def recipients(self) -> list[RecipientEntry]:
        """Return every registered recipient, by name."""
        ...

    def revoke_device(self, device_id: bytes, now_ms: int) -> Device:
        """Revoke a device; raise DeviceNotFound. Revoking twice is a no-op."""
        ...

    def balances(self) -> list[Balance]:
        """Return the settled balance of every owner, ordered by owner."""
        ...

    def owner_credits(self, after_owner: str, limit: int) -> list[OwnerCredit]:
        """Return owners after ``after_owner`` (by UTF-8 bytes) with credit and device count."""
        ...

    def add_checkpoint(self, size: int, root_hash: bytes, note: str, issued_ms: int,
                       balances: bytes) -> StoredCheckpoint:
        """Persist a signed checkpoint (durably, before anyone sees it)."""
        ...

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """Return the newest checkpoint, or None before the first."""
        ...

    def checkpoints(self, after_number: int, limit: int) -> list[StoredCheckpoint]:
        """Return checkpoints with number > after_number, oldest first."""
        ...

    def add_anchor(self, checkpoint_number: int, backend: str, reference: str,
                   anchored_ms: int) -> None:
        """Remember where a checkpoint was anchored."""
        ...

    def counts(self) -> dict[str, int]:
        """Return table counts for /v1/stats (devices, revoked, gaps, equivocations, ...)."""
        ...

    def device_counts(self) -> DeviceCounts:
        """Count the registry only (its size, not the log's, bounds the work)."""
        ...

    def close(self) -> None:
        """Close every connection."""
        ...

