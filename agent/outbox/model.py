"""Value types of the outbox: its settings, its status figures, a receipt's effect."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from protocol.reasons import DropReason
from protocol.receipt import Status

FullPolicy = Literal["drop-oldest", "reject-new"]
FULL_POLICIES: tuple[FullPolicy, ...] = ("drop-oldest", "reject-new")

# The gap reason for numbers an unclean stop followed by a reboot (a power cut, a kernel
# crash) left unaccounted for; one of the typed drop reasons in protocol/reasons.py.
UNCLEAN_REBOOT = DropReason.UNCLEAN_REBOOT


@dataclass(frozen=True)
class OutboxSettings:
    """How the outbox commits and how big it may grow.

    ``commit_window_ms`` / ``commit_max_records`` form the group-commit window: a crash of
    the process loses nothing (the journal), a power cut at most the records appended since
    the last commit (at most that long or that many), declared as a gap. ``max_bytes``
    bounds the stored signed bytes; ``full_policy`` says what happens
    when it is reached.
    """

    max_bytes: int = 64 * 1024 * 1024
    full_policy: FullPolicy = "drop-oldest"
    commit_window_ms: int = 5000
    commit_max_records: int = 256
    dead_letter_max: int = 10_000


@dataclass(frozen=True)
class OutboxStats:
    """What ``status`` shows about the outbox."""

    depth: int
    bytes: int
    head_seq: int
    dead_letters: dict[str, int]
    counters: dict[str, int] = field(default_factory=dict)
    corrupt_outboxes: int = 0

    def counter(self, name: str) -> int:
        return self.counters.get(name, 0)

    def as_dict(self) -> dict[str, object]:
        c = self.counter
        return {
            "depth": self.depth,
            "bytes": self.bytes,
            "last_seq": self.head_seq,
            "dead_letters": dict(self.dead_letters),
            "dead_letters_pruned": c("dead_letters_pruned"),
            "dropped": c("dropped"),
            "drop_events": c("drop_events"),
            "rejected_new": c("rejected_new"),
            "gaps_declared": c("gaps_declared"),
            "withdrawn": c("withdrawn"),
            "journal_replays": c("journal_replays"),
            "unclean_reboots": c("unclean_reboots"),
            "delivered": c("receipt_delivered"),
            "duplicates": c("receipt_duplicates"),
            "rejected_by_gateway": c("receipt_rejected"),
            "receipt_hash_mismatches": c("receipt_mismatched"),
            "receipt_unknown_records": c("receipt_unknown"),
            "last_receipt_ms": self.counters.get("last_receipt_ms"),
            "last_receipt_batch": self.counters.get("last_receipt_batch"),
            "settled_micro": c("settled_micro"),
            "corrupt_outboxes": self.corrupt_outboxes,
        }


@dataclass
class ReceiptResult:
    """What one receipt did to the outbox."""

    delivered: int = 0
    duplicates: int = 0
    rejected: int = 0
    mismatched: int = 0
    unknown: int = 0

    @property
    def removed(self) -> int:
        return self.delivered + self.duplicates + self.rejected


def consecutive_runs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Group sorted sequence numbers into inclusive ``(first, last)`` runs of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if runs and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


@dataclass(frozen=True)
class HeldOutcome:
    """What the gateway said about a held record (:meth:`Outbox.held_outcome`).

    ``status`` is None when nobody knows: the outbox holding the record was replaced before
    its receipt came. ``reason`` is the gateway's reason code for a rejection (as received:
    a newer gateway may send a code this agent does not know).
    """

    status: Status | None
    reason: str | None = None
