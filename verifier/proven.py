"""The leaves a payout recomputation reads, each proven to be in a verified checkpoint.

A gateway serves listings (documents by type, a device's records) with leaf indices; none
of it is trusted (PROTOCOL.md §19.4, "Recomputing"). :class:`ProvenLog` hands out a leaf
only after checking that those exact bytes are the leaf at that index of the checkpoint's
tree (an RFC 9162 inclusion proof): a consent the log does not hold, or holds at another
leaf (moved before a record it would pay, a revocation moved after one), raises.

Inclusion cannot show that a listing is complete. With ``scan`` the log is read leaf by
leaf below the checkpoint (``GET /v1/leaves``, 1,000 a request; the bytes tell a record
from a document, §8, whatever the gateway labels them), its root is rebuilt from them and
must be the checkpoint's, and every listing must hold exactly the scanned leaves of its
kind: a gateway hiding a revocation, a lapse notice, a quality verdict, a consent or a usage
record is caught. Memory: the root's frontier and the hashes of the leaves of those kinds.
"""

from __future__ import annotations

from collections.abc import Iterator

import rewards.documents  # noqa: F401 - registers the "wallet" and "payout_epoch" bodies
from protocol import merkle
from protocol.checkpoint import Checkpoint
from protocol.documents import parse_document
from protocol.errors import MalformedRecord, VerificationError
from protocol.record import Usage
from protocol.signed import parse_signed_record
from verifier.client import DocumentClient, LoggedDocument, LoggedRecord

DOCUMENT_KINDS = ("consent", "revocation", "lapse", "quality")
PAGE = 1000  # leaves per request while scanning


class ProvenLog:
    """The leaves below ``checkpoint`` (verified by the caller) that gating reads."""

    def __init__(self, client: DocumentClient, checkpoint: Checkpoint, *,
                 scan: bool = True) -> None:
        self.client = client
        self.size, self.root_hash = checkpoint.size, checkpoint.root_hash
        self.scanned = scan
        self.proven = 0  # leaves proven by an inclusion proof (without a scan)
        self._documents: dict[str, dict[int, bytes]] = {kind: {} for kind in DOCUMENT_KINDS}
        self._usage: dict[bytes, dict[int, bytes]] = {}  # device -> leaf -> leaf hash
        if scan:
            self._scan()

    def _scan(self) -> None:
        frontier = merkle.CompactRange()
        for index, raw in self._leaves():
            leaf = merkle.leaf_hash(raw)
            frontier.append(leaf)
            try:
                message, record = parse_signed_record(raw)
            except MalformedRecord:
                kind = _document_type(raw, index)
                if kind in self._documents:
                    self._documents[kind][index] = leaf
                continue
            if isinstance(record.body, Usage):
                self._usage.setdefault(message.kid, {})[index] = leaf
        if frontier.root() != self.root_hash:
            raise VerificationError(f"the {self.size} leaves the gateway serves below the "
                                    "checkpoint do not make its root")

    def _leaves(self) -> Iterator[tuple[int, bytes]]:
        """Every leaf below the checkpoint, a page of up to 1,000 at a time."""
        index = 0
        while index < self.size:
            page = self.client.leaf_range(index, min(PAGE, self.size - index))
            if not page:
                raise VerificationError(f"the gateway serves no leaf {index} below the "
                                        f"checkpoint's size {self.size}")
            for raw in page:
                yield index, raw
                index += 1

    def documents(self, kind: str) -> list[LoggedDocument]:
        """The ``kind`` documents logged below the checkpoint, in log order, proven."""
        listed = [d for d in self.client.all_documents(kind) if d.index < self.size]
        self._check(kind, [(d.index, d.raw) for d in listed],
                    self._documents.get(kind, {}))
        return listed

    def usage(self, device: bytes) -> list[LoggedRecord]:
        """The usage records of ``device`` logged below the checkpoint, proven. A record is
        one by its bytes: one the gateway labels another stream is still returned."""
        listed = [r for r in self.client.all_device_records(device)
                  if r.index < self.size and (r.stream == "usage" or _is_usage(r.record))]
        self._check(f"usage record of device {device.hex()}",
                    [(r.index, r.record) for r in listed], self._usage.get(device, {}))
        return listed

    def _check(self, what: str, listed: list[tuple[int, bytes]],
               scanned: dict[int, bytes]) -> None:
        if not self.scanned:
            for index, raw in listed:
                self.prove(raw, index, what)
            return
        for index, raw in listed:
            if scanned.get(index) != merkle.leaf_hash(raw):
                raise VerificationError(f"the gateway serves a {what} at leaf {index} that "
                                        f"the log (size {self.size}) does not hold there")
        hidden = sorted(set(scanned) - {index for index, _ in listed})
        if hidden:
            raise VerificationError(f"the gateway's listing hides the {what} logged at leaf "
                                    f"{hidden[0]} (below checkpoint size {self.size})")

    def prove(self, raw: bytes, index: int, what: str) -> None:
        """Raise VerificationError unless ``raw`` is leaf ``index`` of the checkpoint."""
        if index >= self.size:
            raise VerificationError(f"the {what} at leaf {index} is not below the "
                                    f"checkpoint's size {self.size}")
        try:
            merkle.verify_inclusion(merkle.leaf_hash(raw), index, self.size,
                                    self.client.inclusion_proof(index, self.size),
                                    self.root_hash)
        except VerificationError as exc:
            raise VerificationError(f"the {what} served at leaf {index} is not in the "
                                    f"checkpoint of size {self.size}: {exc}") from None
        self.proven += 1


def _document_type(raw: bytes, index: int) -> str:
    try:
        return parse_document(raw).type
    except MalformedRecord as exc:
        raise VerificationError(f"leaf {index} is neither a signed record nor a document "
                                f"({exc})") from None


def _is_usage(raw: bytes) -> bool:
    try:
        return isinstance(parse_signed_record(raw)[1].body, Usage)
    except MalformedRecord:
        return False
