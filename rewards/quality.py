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
from collections.abc import Iterable
from dataclasses import dataclass

from protocol.documents import Document
from protocol.keys import signer_id
from protocol.quality import QualityAttestation
from rewards.gating import UsageLeaf

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
