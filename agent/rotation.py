"""Key rotation on the device: announce ``device.next.key``, then sign with it.

docs/PROTOCOL.md §3.3: a ``rotation`` record (``protocol.record.KeyRotation``) signed with
the device's current key names the next key; the gateway checks every later record against
the new key; the device id (COSE kid) stays. docs/AGENT.md ("Key rotation") has the files,
the states and the operator's view; this docstring has the ordering and why it is safe.

The rotation's state lives in the outbox's ``meta`` table (``rot_*`` notes), written in the
same transaction as the rotation record, so the record and the intent become durable
together or not at all. The key files change only by an atomic rename over ``device.key``
(after the old key was copied to its new name), so ``device.key`` always holds a whole key.

1. ``device.next.key`` found, nothing pending: the rotation record (signed with the old
   key) is appended as a *held* record with notes ``announced`` and committed (fsync).
   A crash before the commit loses the uncommitted record, which nobody saw (only
   committed records are sent); the next start announces again, the only record ever sent.
2. From that commit on every record is signed with the new key: the signer switches in
   memory before anything else is signed, then the old key is copied to
   ``device.prev.key`` and ``device.next.key`` renamed over ``device.key``. A crash
   anywhere here is finished at the next start by :meth:`KeyRotator.reconcile` from the
   notes, before anything is signed. The outbox sends nothing after the rotation record
   until its receipt arrives, so the gateway never sees a new-key record first.
3. Receipt ``accepted`` (or ``duplicate``): notes ``accepted``, ``device.prev.key`` deleted
   (a stolen old key cannot sign anything new).
4. Receipt ``rejected`` (``bad_rotation``: the key is already in use, for example): the
   gateway still expects the old key. Notes ``rejected`` first, then the signer goes back
   to the old key, ``device.key`` is copied to ``device.rejected.key`` and
   ``device.prev.key`` renamed over ``device.key``. The records signed with the new key in
   the meantime come back ``bad_signature`` and stay as dead letters; a loud error and the
   status's ``rotation`` section say so.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum, unique
from pathlib import Path

from agent.identity import KeyFiles
from agent.outbox import Outbox
from agent.records import RecordFactory
from protocol.errors import KeyFileError
from protocol.keys import SigningKey, load_device_key, save_device_key
from protocol.receipt import Status
from protocol.record import ROTATION_STREAM, KeyRotation

log = logging.getLogger(__name__)



@unique
class RotationState(StrEnum):
    """Where the last key rotation stands; the value is what ``status --json`` shows and
    what the outbox's ``rot_state`` note holds."""

    NONE = "none"                # no rotation was ever recorded
    ANNOUNCED = "announced"      # the rotation record is in the outbox, no receipt yet
    ACCEPTED = "accepted"        # the gateway logged it: the new key signs from now on
    REJECTED = "rejected"        # the gateway refused it: the old key stays
    UNCONFIRMED = "unconfirmed"  # the outbox holding the record was replaced before its receipt


ANNOUNCED, ACCEPTED, REJECTED = (RotationState.ANNOUNCED, RotationState.ACCEPTED,
                                 RotationState.REJECTED)
UNCONFIRMED = RotationState.UNCONFIRMED
NOTE_NAMES = ("rot_state", "rot_seq", "rot_old", "rot_new", "rot_device", "rot_reason")

Step = Callable[[str], None]
"""Called with the name of each step of a rotation (tests crash there)."""


@dataclass(frozen=True)
class RotationNotes:
    """The last key rotation as the outbox recorded it."""

    state: RotationState
    seq: int
    old: bytes
    new: bytes
    device_id: bytes
    reason: str | None = None

    @classmethod
    def from_meta(cls, meta: Mapping[str, object]) -> RotationNotes | None:
        if "rot_state" not in meta:
            return None
        reason = meta.get("rot_reason")
        try:
            state = RotationState(str(meta["rot_state"]))
        except ValueError:
            raise KeyFileError(f"outbox: key rotation note has an unknown state "
                               f"{str(meta['rot_state'])[:32]!r}") from None
        return cls(state, int(str(meta["rot_seq"])), _blob(meta["rot_old"]),
                   _blob(meta["rot_new"]), _blob(meta["rot_device"]),
                   None if reason is None else str(reason))

    def as_meta(self) -> dict[str, object]:
        return {"rot_state": self.state.value, "rot_seq": self.seq, "rot_old": self.old,
                "rot_new": self.new, "rot_device": self.device_id, "rot_reason": self.reason}


def _blob(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise KeyFileError(f"outbox: key rotation note is damaged ({type(value).__name__})")
    return value


class KeyRotator:
    """Carries out key rotations for one device (see the module docstring)."""

    def __init__(self, files: KeyFiles, outbox: Outbox, *, step: Step | None = None) -> None:
        self.files = files
        self._outbox = outbox
        self._step: Step = step or (lambda _name: None)
        self._notes = RotationNotes.from_meta(outbox.read_notes(NOTE_NAMES))
        self._signer: RecordFactory | None = None
        self._on_key: Callable[[SigningKey], None] = lambda _key: None
        self._unconfirmed = False
        self._stuck = False
        self.error: str | None = None
        self.counters: Counter[str] = Counter()

    @property
    def device_id(self) -> bytes | None:
        """The device id a recorded rotation names (None if none was recorded)."""
        return self._notes.device_id if self._notes else None

    @property
    def state(self) -> RotationState:
        if self._notes is None:
            return RotationState.NONE
        return UNCONFIRMED if self._unconfirmed else self._notes.state

    def status(self) -> dict[str, object]:
        """The ``rotation`` section of the agent's status (public keys only)."""
        n = self._notes
        return {"state": self.state.value, "seq": n.seq if n else None,
                "new_public_key": n.new.hex() if n else None,
                "reason": n.reason if n else None, "error": self.error,
                "counters": dict(self.counters)}

    # --- start ----------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Make the key files agree with the last rotation the outbox recorded.

        Finishes the renames a crash interrupted; does nothing when they agree. Raises
        KeyFileError if the files hold neither key of the recorded rotation.
        """
        n = self._notes
        if n is None:
            return
        if n.state is REJECTED:
            self._settle(n, want=n.old, other=n.new, source=self.files.prev,
                         stash=self.files.rejected)
            return
        self._settle(n, want=n.new, other=n.old, source=self.files.next, stash=self.files.prev)
        if n.state is ACCEPTED:
            self._drop_prev()

    def _settle(self, n: RotationNotes, *, want: bytes, other: bytes, source: Path,
                stash: Path) -> None:
        current = load_device_key(self.files.current).public_key
        if current == want:
            return
        found = load_device_key(source).public_key if source.exists() else None
        if current != other or found != want:
            raise KeyFileError(
                f"{self.files.current}: the outbox records a key rotation ({n.state}, record "
                f"{n.seq}) to be signing with key {want.hex()}, but neither this file nor "
                f"{source.name} holds it")
        log.warning("finishing key rotation %s (record %d) that a crash interrupted: %s "
                    "becomes %s", n.state, n.seq, source.name, self.files.current.name)
        self._swap(source, stash)

    def attach(self, signer: RecordFactory, on_key: Callable[[SigningKey], None]) -> None:
        """Give the rotator the record signer; ``on_key`` hears of every key switch."""
        self._signer = signer
        self._on_key = on_key

    # --- announcing -----------------------------------------------------------------------

    def begin_if_requested(self) -> int | None:
        """Announce ``device.next.key`` if it is there and no rotation awaits its receipt.

        Returns the rotation record's seq, or None. A next key that cannot be used is
        reported (log, status ``error``) and left where it is. Raises StorageError if the
        outbox fails (nothing is announced then).
        """
        signer = self._signer
        assert signer is not None, "attach() first"
        if self.state in (ANNOUNCED, UNCONFIRMED) or not self.files.next.exists():
            return None
        try:
            new = load_device_key(self.files.next)
        except KeyFileError as exc:
            self._problem(f"device.next.key not used: {exc}")
            return None
        refused = self._refusal(new.public_key, signer.public_key)
        if refused:
            self._problem(refused)
            return None
        notes = RotationNotes(ANNOUNCED, -1, signer.public_key, new.public_key,
                              signer.device_id)

        def build(seq: int, prev: bytes) -> bytes:
            self._step("signing")
            return signer.sign_body(seq, prev, ROTATION_STREAM, KeyRotation(new.public_key))

        def note(seq: int) -> dict[str, object]:
            self._step("noted")  # signed, its transaction open, nothing committed
            return replace(notes, seq=seq).as_meta()

        seq = self._outbox.append_held(ROTATION_STREAM, build, note)
        self._notes = replace(notes, seq=seq)
        self.error = None
        self.counters["announced"] += 1
        self._step("announced")
        self._use(new)  # before anything else is signed: records after `seq` need it
        log.warning("key rotation: record %d announces key %s; later records are signed "
                    "with it", seq, new.public_key.hex())
        self._swap_or_report(self.files.next, self.files.prev)
        return seq

    def _refusal(self, new: bytes, current: bytes) -> str | None:
        n = self._notes
        if new == current:
            return f"{self.files.next}: holds the key already in use; nothing to announce"
        if n is not None and n.state is REJECTED and new == n.new:
            return (f"{self.files.next}: the gateway already rejected this key ({n.reason}, "
                    f"record {n.seq}); make a new one with edgeproof-provision device rotate")
        if n is not None and new == n.old:
            return f"{self.files.next}: holds an earlier key of this device; make a new one"
        return None

    # --- the receipt ----------------------------------------------------------------------

    def poll(self) -> None:
        """Finish a rotation whose record the gateway has answered. Raises StorageError."""
        n = self._notes
        if n is None or n.state != ANNOUNCED or self._unconfirmed or self._stuck:
            return
        outcome = self._outbox.held_outcome(n.seq)
        if outcome is None:
            return
        if outcome.status in (Status.ACCEPTED, Status.DUPLICATE):
            self._accepted(n)
        elif outcome.status is Status.REJECTED:
            self._rejected(n, outcome.reason or "unknown")
        else:
            self._unconfirmed = True
            self._problem(f"the outbox holding key rotation record {n.seq} was replaced before "
                          "the gateway answered; signing with the new key goes on. If the "
                          "gateway's key list lacks it, see docs/AGENT.md, Key rotation")

    def _accepted(self, n: RotationNotes) -> None:
        self._outbox.write_notes({"rot_state": ACCEPTED.value})
        self._notes = replace(n, state=ACCEPTED)
        self.counters["accepted"] += 1
        self._step("accepted")
        self._drop_prev()
        log.info("key rotation accepted by the gateway (record %d); the old key is deleted",
                 n.seq)
        self.begin_if_requested()

    def _rejected(self, n: RotationNotes, reason: str) -> None:
        try:
            old = load_device_key(self.files.prev)
        except KeyFileError as exc:
            self._cannot_restore(n, reason, str(exc))
            return
        if old.public_key != n.old:
            self._cannot_restore(n, reason, f"{self.files.prev}: not the key that was replaced")
            return
        self._outbox.write_notes({"rot_state": REJECTED.value, "rot_reason": reason})
        self._notes = replace(n, state=REJECTED, reason=reason)
        self._use(old)  # the gateway still expects the old key for every later record
        self.counters["rejected"] += 1
        self._step("rejected")
        self._swap_or_report(self.files.prev, self.files.rejected)
        self.error = f"key rotation rejected by the gateway: {reason}"
        log.error("KEY ROTATION REJECTED by the gateway (%s): record %d announcing key %s. "
                  "Signing with the old key again; the records signed with the new key after "
                  "record %d come back as bad_signature dead letters. The refused key is kept "
                  "in %s; prepare a new one (edgeproof-provision device rotate).",
                  reason, n.seq, n.new.hex(), n.seq, self.files.rejected)

    # --- files ----------------------------------------------------------------------------

    def _use(self, key: SigningKey) -> None:
        assert self._signer is not None
        self._signer.use_key(key)
        self._on_key(key)

    def _swap(self, source: Path, stash: Path) -> None:
        """Copy device.key to ``stash``, then rename ``source`` over device.key (fsynced)."""
        current = load_device_key(self.files.current)
        save_device_key(stash, current, overwrite=True)  # 0600, written whole, fsynced
        self._step("stashed")
        try:
            os.replace(source, self.files.current)  # atomic: never a missing device.key
        except OSError as exc:
            raise KeyFileError(f"{source}: cannot rename to {self.files.current.name}: "
                               f"{exc.strerror}") from None
        self._step("swapped")
        _sync_dir(self.files.current.parent)

    def _swap_or_report(self, source: Path, stash: Path) -> None:
        try:
            self._swap(source, stash)
        except KeyFileError as exc:  # the signer already switched; the next start retries
            self._problem(f"key files not switched yet (retried at the next start): {exc}")

    def _drop_prev(self) -> None:
        try:
            self.files.prev.unlink(missing_ok=True)
            _sync_dir(self.files.prev.parent)
        except (OSError, KeyFileError) as exc:
            self._problem(f"{self.files.prev}: cannot delete the old key: {exc}")

    def _cannot_restore(self, n: RotationNotes, reason: str, why: str) -> None:
        self._stuck = True
        self._problem(f"KEY ROTATION REJECTED by the gateway ({reason}, record {n.seq}) "
                      f"and the old key cannot be restored: {why}")

    def _problem(self, message: str) -> None:
        if message != self.error:
            self.counters["problems"] += 1
            log.error("%s", message)
        self.error = message


def _sync_dir(path: Path) -> None:
    """fsync a directory so that renames in it survive a power cut."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot sync the directory: {exc.strerror}") from None
