"""The device's grant book: the consents its owner signed, and the revocations.

The book holds what the device has ACCEPTED (the policy inbox, agent/policy.py, verifies
documents against the pinned owner key before anything reaches it). It is a small JSON
file in the state directory, replaced atomically (write, fsync, rename) on every change, so
a revocation once applied survives a crash and a restart. Bounded: at most
``MAX_GRANTS`` grants in force and ``MAX_REVOKED`` remembered revocations (a revoked consent
is forgotten once its period has ended, when a replay of it could not be in force anyway).

Every refusal is counted by reason (``refused``), shown by ``edgeproof-agent status``.
``version`` increases on every change; the record writer starts a new key epoch when it
sees a new version (docs/AGENT.md, "Consents, grants and revocation").
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from pathlib import Path

from protocol.errors import StorageError, VerificationError
from protocol.grants import AccessGrant

log = logging.getLogger(__name__)

GRANTS_FILE = "grants.json"
MAX_GRANTS = 64
MAX_REVOKED = 4096
# A revocation of a consent the device never applied (its period unknown) is remembered
# this long after it is applied, measured on a synced wall clock.
TOMBSTONE_MS = 366 * 86_400_000
# The "until" of such a revocation applied while the wall clock was not synced: a time
# read from that clock could already be past (no RTC, before NTP) and forget_ended would
# drop it as soon as the clock synced, letting a replay of the consent in again. It is
# stamped TOMBSTONE_MS after the first synced forget_ended instead.
UNTIL_SYNCED = -1


class GrantBook:
    """The accepted grants and revocations of one device. Thread-safe."""

    def __init__(self, path: Path) -> None:
        """Load ``path`` (an absent file is an empty book). Raises StorageError if it is
        unreadable or damaged: a device must not forget a revocation silently."""
        self.path = path
        # Public so that the writer and the policy inbox can make "check the version, then
        # seal" and "revoke, then withdraw" atomic against each other (agent/policy.py).
        self.lock = threading.RLock()
        self._grants: dict[str, AccessGrant] = {}  # by derived stream
        self._revoked: dict[bytes, int] = {}       # consent hash -> its not_after_ms
        self.refused: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.version = 0
        self.last_counter = 0  # the highest revocation counter applied (PROTOCOL.md §16.3)
        self.next_index = 0    # the policy-sync position: every document below is applied
        self._load()

    # --- queries ------------------------------------------------------------------------

    def grants(self) -> tuple[AccessGrant, ...]:
        """Every accepted, unrevoked grant (in force or not), by derived stream name."""
        with self.lock:
            return tuple(self._grants[k] for k in sorted(self._grants))

    def in_force(self, wall_ms: int, synced: bool) -> tuple[AccessGrant, ...]:
        """The grants the device may seal to at ``wall_ms`` (see AccessGrant.in_force)."""
        return tuple(g for g in self.grants() if g.in_force(wall_ms, synced))

    def is_revoked(self, consent_hash: bytes) -> bool:
        with self.lock:
            return consent_hash in self._revoked

    def knows(self, consent_hash: bytes) -> bool:
        """Whether a grant of this consent is in the book."""
        with self.lock:
            return any(g.consent_hash == consent_hash for g in self._grants.values())

    # --- changes ------------------------------------------------------------------------

    def add(self, grants: tuple[AccessGrant, ...]) -> None:
        """Accept the grants of one consent (already verified). Raises StorageError."""
        with self.lock:
            for grant in grants:
                self._grants[grant.derived_stream] = grant
            self._changed("consents")

    def revoke(self, consent_hash: bytes, not_after_ms: int, counter: int = 0,
               what: str = "revocations") -> tuple[str, ...]:
        """Remove every grant of ``consent_hash`` and remember it as revoked (until its
        period ends, or ``not_after_ms`` for a consent the device never applied, which may
        be UNTIL_SYNCED: a year after the wall clock is next known synced); raise
        ``last_counter`` to ``counter``; count it as ``what`` (a lapse: ``lapses``).

        Returns the derived streams that ended. Raises StorageError.
        """
        with self.lock:
            ended = tuple(k for k, g in self._grants.items() if g.consent_hash == consent_hash)
            if ended:
                not_after_ms = max(self._grants[k].not_after_ms for k in ended)
            for name in ended:
                del self._grants[name]
            self._revoked[consent_hash] = not_after_ms
            self.last_counter = max(self.last_counter, counter)
            self._changed(what)
            return ended

    def forget_ended(self, wall_ms: int, synced: bool) -> None:
        """Drop revocations and grants whose period has provably ended (bounded memory)."""
        if not synced:
            return
        with self.lock:
            unstamped = [h for h, until in self._revoked.items() if until == UNTIL_SYNCED]
            for h in unstamped:
                self._revoked[h] = wall_ms + TOMBSTONE_MS
            old_revoked = [h for h, until in self._revoked.items() if until <= wall_ms]
            old_grants = [k for k, g in self._grants.items() if g.not_after_ms <= wall_ms]
            if not old_revoked and not old_grants:
                if unstamped:
                    self._save()
                return
            for h in old_revoked:
                del self._revoked[h]
            for k in old_grants:
                del self._grants[k]
            self._save()
            self.version += 1

    def synced_to(self, next_index: int) -> None:
        """Every policy document below leaf index ``next_index`` has been applied."""
        with self.lock:
            if next_index > self.next_index:
                self.next_index = next_index
                self._save()

    def duplicate(self) -> None:
        """Count a document applied before (delivered again): not a refusal."""
        with self.lock:
            self.accepted["duplicates"] += 1

    def room_for(self, count: int) -> bool:
        with self.lock:
            return (len(self._grants) + count <= MAX_GRANTS
                    and len(self._revoked) < MAX_REVOKED)

    def refuse(self, reason: str, *, save: bool = True) -> None:
        """Count one refused document and write the book (status reads it live); with
        ``save=False`` the count is written by the next :meth:`save_refusals` or change."""
        with self.lock:
            self.refused[reason] += 1
            if save:
                self.save_refusals()

    def save_refusals(self) -> None:
        """Write the book for the refusals counted so far (one write for a whole delivery,
        not one fsync per refused document). A write error is logged, not raised."""
        with self.lock:
            try:
                self._save()
            except StorageError as exc:  # the count stays in memory; status still shows it
                log.warning("%s", exc)

    def _changed(self, what: str) -> None:
        self.accepted[what] += 1
        self._save()
        self.version += 1

    # --- status -------------------------------------------------------------------------

    def status(self, wall_ms: int, synced: bool) -> dict[str, object]:
        """A JSON-ready view for ``status``: grants with their state, counters."""
        with self.lock:
            grants = [{
                "consent": g.consent_hash.hex(), "stream": g.stream, "fields": list(g.fields),
                "derived_stream": k, "recipient": g.recipient.hex(),
                "min_interval_ms": g.min_interval_ms, "not_before_ms": g.not_before_ms,
                "not_after_ms": g.not_after_ms, "in_force": g.in_force(wall_ms, synced),
            } for k, g in sorted(self._grants.items())]
            return {"grants": grants, "revoked": len(self._revoked),
                    "last_counter": self.last_counter, "next_index": self.next_index,
                    "accepted": dict(self.accepted), "refused": dict(self.refused)}

    # --- the file -----------------------------------------------------------------------

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot read ({exc.strerror})") from None
        try:
            data = json.loads(text)
            for item in data["grants"]:
                grant = _grant_from_json(item)
                self._grants[grant.derived_stream] = grant
            self._revoked = {bytes.fromhex(h): int(t) for h, t in data["revoked"]}
            self.refused.update({str(k): int(v) for k, v in data["refused"].items()})
            self.accepted.update({str(k): int(v) for k, v in data["accepted"].items()})
            self.last_counter = _int(data["last_counter"])
            self.next_index = _int(data["next_index"])
        except (ValueError, KeyError, TypeError, VerificationError) as exc:
            raise StorageError(f"{self.path}: damaged grant book ({exc}); move it aside "
                               f"only after the owner re-sent its revocations") from None

    def _save(self) -> None:
        data = {
            "grants": [_grant_to_json(g) for _, g in sorted(self._grants.items())],
            "revoked": sorted([h.hex(), t] for h, t in self._revoked.items()),
            "refused": dict(self.refused), "accepted": dict(self.accepted),
            "last_counter": self.last_counter, "next_index": self.next_index,
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with tmp.open("w", encoding="utf-8") as out:
                json.dump(data, out, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot write ({exc.strerror})") from None


def _grant_to_json(g: AccessGrant) -> dict[str, object]:
    return {"consent": g.consent_hash.hex(), "recipient": g.recipient.hex(),
            "stream": g.stream, "fields": list(g.fields), "min_interval_ms": g.min_interval_ms,
            "not_before_ms": g.not_before_ms, "not_after_ms": g.not_after_ms}


def _grant_from_json(item: dict[str, object]) -> AccessGrant:
    fields = item["fields"]
    if not isinstance(fields, list):
        raise TypeError("fields must be a list")
    return AccessGrant(
        consent_hash=bytes.fromhex(str(item["consent"])),
        recipient=bytes.fromhex(str(item["recipient"])), stream=str(item["stream"]),
        fields=tuple(str(f) for f in fields), min_interval_ms=_int(item["min_interval_ms"]),
        not_before_ms=_int(item["not_before_ms"]), not_after_ms=_int(item["not_after_ms"]))


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError("integer expected")
    return value
