"""The validator as a running role: read a site's streams as a granted recipient, judge
every complete window, sign and submit one attestation per window.

The validator fetches each sensor's records from the gateway, verifies and opens them with
its X25519 key (the recipient code of :mod:`verifier.recipient`: a record whose signature
fails is never opened), keeps the readings of the site's field made with a synchronised
clock, and judges the windows in order with one :class:`~validator.site.SiteValidator`.
An attestation is signed with ``issued_ms`` = its window's end, so judging the same log
again gives the same bytes and the gateway answers "already logged": a rerun is harmless.
Everything not used is counted by reason in :class:`Outcome`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from protocol.documents import Document
from protocol.keys import RecipientKey, SigningKey
from validator.attest import attestation_for, sign_attestation
from validator.model import Thresholds, WindowVerdict
from validator.site import SiteValidator
from validator.sites import SiteFile
from verifier.client import DocumentClient, DocumentRefusedByGateway
from verifier.recipient import Opener

Readings = dict[str, list[tuple[float, float, int]]]  # sensor -> (wall_s, value, leaf index)


@dataclass
class Outcome:
    """What one run did: verdicts, submissions and every reading or window not used."""

    verdicts: list[WindowVerdict] = field(default_factory=list)
    logged: int = 0
    already_logged: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)


def collect(client: DocumentClient, site: SiteFile, key: RecipientKey, out: Outcome
            ) -> Readings:
    """Every usable reading of the site's sensors, by sensor name."""
    readings: Readings = {}
    for device_id in site.device_ids():
        logged = client.all_device_records(device_id)
        index = {r.seq: r.index for r in logged}
        opener = Opener(client.device_keys(device_id), key, {site.stream})
        mine = readings.setdefault(device_id.hex(), [])
        for opened in opener.feed(logged):
            if opened.status not in {"decrypted", "plaintext"}:
                out.skipped[opened.status] += 1
                continue
            values = [v for v in opened.values if v.unit == site.field]
            if not values or not opened.clock_synced:
                out.skipped["no_value" if not values else "clock_unsynced"] += 1
                continue
            mine.append((opened.wall_ms / 1000, float(values[0].value), index[opened.seq]))
    return readings


def judge(site: SiteFile, readings: Readings, now_s: float,
          th: Thresholds | None = None) -> list[tuple[WindowVerdict, dict[str, list[int]]]]:
    """Judge every window from the first reading's to the last reading's, if it has ended."""
    validator = SiteValidator(site.spec, th)
    w = validator.th.window_s
    times = [t for items in readings.values() for t, _, _ in items]
    if not times:
        return []
    out = []
    last = min(int(now_s) // w * w - w, int(max(times)) // w * w)  # ended, and not past data
    for start in range(int(min(times)) // w * w, last + 1, w):
        inside = {name: [(t, v, i) for t, v, i in items if start <= t < start + w]
                  for name, items in readings.items()}
        verdict = validator.judge(start, {n: [(t, v) for t, v, _ in items]
                                          for n, items in inside.items()})
        out.append((verdict, {n: [i for _, _, i in items] for n, items in inside.items()}))
    return out


def run_once(client: DocumentClient, site: SiteFile, signing: SigningKey,
             sealing: RecipientKey, now_ms: int, *, th: Thresholds | None = None
             ) -> Outcome:
    """Collect, judge, attest and submit every complete window; return what happened."""
    out = Outcome()
    readings = collect(client, site, sealing, out)
    for verdict, leaves in judge(site, readings, now_ms / 1000, th):
        out.verdicts.append(verdict)
        doc = attest(site, verdict, leaves, signing)
        try:
            _, duplicate = client.submit(doc.raw)
        except DocumentRefusedByGateway as exc:
            out.refused[exc.reason or "unknown"] += 1
            continue
        if duplicate:
            out.already_logged += 1
        else:
            out.logged += 1
    return out


def attest(site: SiteFile, verdict: WindowVerdict, leaves: dict[str, list[int]],
           signing: SigningKey) -> Document:
    body = attestation_for(verdict, site.stream, site.field, leaves)
    return sign_attestation(body, signing, body.window_end_ms)
