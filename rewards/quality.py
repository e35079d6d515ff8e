"""Rewards follow quality: which usage records a trusted validator's verdicts withhold.

The rule (docs/PROTOCOL.md §19.4 rule 5, §20), integers and the log only. The gateway's
``[payout] quality_validators`` names the validators whose verdicts count (their signer ids,
committed to in the epoch document, key 13). A usage record at leaf ``u`` of device ``d``
made at ``wall_ms`` ``w`` is **withheld** (settled, never paid, funding not spent on it) if a
quality attestation of a trusted validator logged BEFORE ``u``

- judges ``d`` faulty (state 2) in a window that holds ``w``, or
- is that validator's latest verdict on ``d`` before ``u`` and judges it faulty (a sensor
  stays excluded until its validator attests it healthy or recovered again).

Only leaves before ``u`` count, so a verdict logged later never takes back what an earlier
epoch paid: cumulative amounts still never decrease. A verdict of an untrusted signer (an
owner's own hub, unless the operator names it) changes nothing, and a trusted validator
cannot be overruled by another one clearing the sensor: any trusted faulty verdict withholds.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from protocol import cbor
from protocol.documents import Document
from protocol.errors import MalformedRecord
from protocol.keys import signer_id
from protocol.quality import QualityAttestation
from rewards.gating import UsageLeaf, snapshot_id, snapshot_list, snapshot_uint

FAULTY = "faulty"


@dataclass(frozen=True)
class VerdictLeaf:
    """One trusted validator's verdict on one device, from an attestation logged at ``leaf``."""

    leaf: int
    validator: bytes  # signer id
    device: bytes
    faulty: bool
    window_start_ms: int
    window_end_ms: int


def verdict_events(doc: Document, leaf: int) -> list[VerdictLeaf]:
    """The verdicts of a verified quality attestation logged at ``leaf``."""
    body = doc.body
    assert isinstance(body, QualityAttestation)
    return [VerdictLeaf(leaf, signer_id(doc.signer), s.device_id, s.state == FAULTY,
                        body.window_start_ms, body.window_end_ms) for s in body.sensors]


class QualityJudge:
    """Answers "is this usage record withheld?" from the trusted validators' verdicts.

    Memory: one entry per verdict of a trusted validator on a device below the epoch's size.
    """

    def __init__(self, verdicts: Iterable[VerdictLeaf], trusted: Iterable[bytes]) -> None:
        self.trusted = frozenset(trusted)
        self._by_device: dict[bytes, list[VerdictLeaf]] = {}
        self._leaves: dict[bytes, list[int]] = {}
        self.add(verdicts)

    def add(self, verdicts: Iterable[VerdictLeaf]) -> None:
        """Add verdicts logged after every one added before (a later part of the log);
        ValueError if one is older."""
        for verdict in sorted(verdicts, key=lambda v: (v.leaf, v.device)):
            if verdict.validator not in self.trusted:
                continue
            leaves = self._leaves.setdefault(verdict.device, [])
            if leaves and verdict.leaf < leaves[-1]:
                raise ValueError(f"verdict at leaf {verdict.leaf} added after leaf {leaves[-1]}")
            leaves.append(verdict.leaf)
            self._by_device.setdefault(verdict.device, []).append(verdict)

    def verdicts(self) -> dict[bytes, list[VerdictLeaf]]:
        """The trusted verdicts held, per device in the order added."""
        return {device: list(history) for device, history in self._by_device.items()}

    def restore(self, verdicts: list[VerdictLeaf]) -> None:
        """Hold one device's verdicts again, in the order :meth:`verdicts` gave them (the
        order :meth:`add` holds them in, kept as it was: two verdicts of one leaf stay)."""
        device = verdicts[0].device
        self._by_device[device] = list(verdicts)
        self._leaves[device] = [v.leaf for v in verdicts]

    def withheld(self, usage: UsageLeaf) -> bool:
        """True if a trusted verdict logged before ``usage`` excludes it (module docstring)."""
        history = self._by_device.get(usage.device)
        if not history:
            return False
        before = history[:bisect.bisect_left(self._leaves[usage.device], usage.leaf)]
        latest: dict[bytes, bool] = {}
        for verdict in before:
            latest[verdict.validator] = verdict.faulty
            if verdict.faulty and verdict.window_start_ms <= usage.wall_ms \
                    < verdict.window_end_ms:
                return True
        return any(latest.values())


def dump_judge(judge: QualityJudge) -> cbor.Value:
    """The trusted verdicts ``judge`` holds, per device in the order added (a deterministic
    CBOR value; :func:`load_judge` reads it back)."""
    out: dict[cbor.Value, cbor.Value] = {}
    for device, verdicts in judge.verdicts().items():
        out[device] = [[v.leaf, v.validator, v.faulty, v.window_start_ms, v.window_end_ms]
                       for v in verdicts]
    return out


def load_judge(value: cbor.Value, trusted: Iterable[bytes], size: int) -> QualityJudge:
    """The judge :func:`dump_judge` wrote, for ``trusted``, of verdicts below ``size``;
    MalformedRecord bad_snapshot for anything else (a verdict of an untrusted validator too)."""
    judge = QualityJudge((), trusted)
    if not isinstance(value, dict):
        raise MalformedRecord("bad_snapshot", "verdicts must be a map")
    for device, items in value.items():
        verdicts = []
        for item in snapshot_list(items, "verdicts"):
            leaf, validator, faulty, start, end = snapshot_list(item, "verdict", 5)
            if not isinstance(faulty, bool):
                raise MalformedRecord("bad_snapshot", "a verdict's faulty must be a boolean")
            verdict = VerdictLeaf(snapshot_uint(leaf, "verdict leaf"),
                                  snapshot_id(validator, "validator"),
                                  snapshot_id(device, "device id"), faulty,
                                  snapshot_uint(start, "window start"),
                                  snapshot_uint(end, "window end"))
            if verdict.leaf >= size or verdict.validator not in judge.trusted:
                raise MalformedRecord("bad_snapshot", f"verdict at leaf {verdict.leaf} of "
                                      "an untrusted validator or beyond the snapshot")
            verdicts.append(verdict)
        if not verdicts or any(b.leaf < a.leaf for a, b in itertools.pairwise(verdicts)):
            raise MalformedRecord("bad_snapshot", "a device's verdicts out of leaf order")
        judge.restore(verdicts)
    return judge
