"""The validator as a running role: read a site's streams as a granted recipient, judge
every complete window, sign and submit one attestation per window.

The validator fetches each sensor's records from the gateway, verifies and opens them with
its X25519 key (the recipient code of :mod:`verifier.recipient`: a record whose signature
fails is never opened), keeps the readings of the site's field made with a synchronised
clock, and judges the windows in order with one :class:`~validator.site.SiteValidator`.
An attestation is signed with ``issued_ms`` = its window's end, so judging the same log
again gives the same bytes and the gateway answers "already logged": a rerun is harmless.
Everything not used is counted by reason in :class:`Outcome`.

With a state file (``state``), a run continues where the last one stopped: the file holds
the validator's state after the last window it judged (every detector's memory and each
sensor's state machine) and, per device, the sequence number up to which every record was
used; a run opens only the records after it (and the key epochs before it, which sealed
records name), judges only the windows after the last one judged, and then replaces the
file atomically (mode 0600: it holds decrypted readings). A reading that arrives for a
window already judged is counted as ``window_judged``. The file is written only after every
window of the run was submitted, so a run that fails on the way leaves the last one's.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.documents import Document
from protocol.errors import ConfigError
from protocol.keys import RecipientKey, SigningKey, read_secret_file, write_secret_file
from protocol.record import KEYS_STREAM
from validator.attest import attestation_for, sign_attestation
from validator.model import Thresholds, WindowVerdict
from validator.site import SiteValidator
from validator.sites import SiteFile
from verifier.client import DocumentClient, DocumentRefusedByGateway
from verifier.recipient import Opener

Readings = dict[str, list[tuple[float, float, int]]]  # sensor -> (wall_s, value, leaf index)
STATE_FORMAT = "edgeproof-validator-state/1"
MAX_STATE_BYTES = 64 << 20


@dataclass
class Outcome:
    """What one run did: verdicts, submissions and every reading or window not used."""

    verdicts: list[WindowVerdict] = field(default_factory=list)
    logged: int = 0
    already_logged: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)


def collect(client: DocumentClient, site: SiteFile, key: RecipientKey, out: Outcome, *,
            after: Mapping[str, int] | None = None, seqs: dict[str, list[tuple[int, float]]]
            | None = None) -> Readings:
    """Every usable reading of the site's sensors, by sensor name; with ``after``
    (device hex -> seq), only those of records after that seq. ``seqs`` gets each device's
    fetched records as ``(seq, wall_s of its reading or -inf)``."""
    readings: Readings = {}
    for device_id in site.device_ids():
        name = device_id.hex()
        logged = client.all_device_records(device_id)
        last = (after or {}).get(name, -1)
        index = {r.seq: r.index for r in logged}
        opener = Opener(client.device_keys(device_id), key, {site.stream})
        opener.feed([r for r in logged if r.seq <= last and r.stream == KEYS_STREAM])
        mine = readings.setdefault(name, [])
        fetched = seqs.setdefault(name, []) if seqs is not None else []
        new = [r for r in logged if r.seq > last]
        fetched += [(r.seq, -math.inf) for r in new]
        for opened in opener.feed(new):
            if opened.status not in {"decrypted", "plaintext"}:
                out.skipped[opened.status] += 1
                continue
            values = [v for v in opened.values if v.unit == site.field]
            if not values or not opened.clock_synced:
                out.skipped["no_value" if not values else "clock_unsynced"] += 1
                continue
            mine.append((opened.wall_ms / 1000, float(values[0].value), index[opened.seq]))
            fetched.append((opened.seq, opened.wall_ms / 1000))
    return readings


def judge(site: SiteFile, readings: Readings, now_s: float,
          th: Thresholds | None = None, *, validator: SiteValidator | None = None,
          out: Outcome | None = None,
          settle_s: float = 0.0) -> list[tuple[WindowVerdict, dict[str, list[int]]]]:
    """Judge every window from the first reading's (or the one after ``validator``'s last)
    to the last reading's, if it ended at least ``settle_s`` before ``now_s`` (readings
    still in a device's outbox or in flight get that long to reach the log before their
    window is judged once and for all). Readings of a window already judged are counted
    in ``out`` as ``window_judged``."""
    validator = validator or SiteValidator(site.spec, th)
    w = validator.th.window_s
    times = [t for items in readings.values() for t, _, _ in items]
    if not times:
        return []
    first = int(min(times)) // w * w
    if validator.last_start is not None:
        first = validator.last_start + w
        late = sum(t < first for t in times)
        if late and out is not None:
            out.skipped["window_judged"] += late
    result = []
    complete_s = int(now_s - settle_s)  # data up to here is taken as all there will be
    last = min(complete_s // w * w - w, int(max(times)) // w * w)  # ended, not past data
    for start in range(first, last + 1, w):
        inside = {name: [(t, v, i) for t, v, i in items if start <= t < start + w]
                  for name, items in readings.items()}
        verdict = validator.judge(start, {n: [(t, v) for t, v, _ in items]
                                          for n, items in inside.items()})
        result.append((verdict, {n: [i for _, _, i in items] for n, items in inside.items()}))
    return result


def run_once(client: DocumentClient, site: SiteFile, signing: SigningKey,
             sealing: RecipientKey, now_ms: int, *, th: Thresholds | None = None,
             state: Path | None = None, settle_s: float = 0.0) -> Outcome:
    """Collect, judge, attest and submit every complete window; return what happened.

    A window is judged only once it ended ``settle_s`` before ``now_ms`` (see judge()).
    With ``state``, continue from that file if it exists and write it afterwards (see the
    module's docstring). Raises ConfigError if it is not a state file of this site and
    these settings.
    """
    th = th or Thresholds()
    out = Outcome()
    validator, after = SiteValidator(site.spec, th), dict[str, int]()
    if state is not None and state.exists():
        validator, after = load_state(state, site, th)
    seqs: dict[str, list[tuple[int, float]]] = {}
    readings = collect(client, site, sealing, out, after=after, seqs=seqs)
    for verdict, leaves in judge(site, readings, now_ms / 1000, th, validator=validator,
                                 out=out, settle_s=settle_s):
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
    if state is not None:
        save_state(state, validator, _consumed(after, seqs, validator))
    return out


def _consumed(after: Mapping[str, int], seqs: Mapping[str, list[tuple[int, float]]],
              validator: SiteValidator) -> dict[str, int]:
    """Per device, the last seq up to which every record was used: before the first
    reading of a window not judged yet."""
    if validator.last_start is None:
        return dict(after)
    open_from = validator.last_start + validator.th.window_s
    out = dict(after)
    for name, fetched in seqs.items():
        pending = [seq for seq, wall in fetched if wall >= open_from]
        if pending:
            out[name] = max(out.get(name, -1), min(pending) - 1)
        elif fetched:
            out[name] = max(seq for seq, _ in fetched)
    return out


def load_state(path: Path, site: SiteFile, th: Thresholds) -> tuple[SiteValidator,
                                                                     dict[str, int]]:
    """The validator and consumed seqs a state file holds; ConfigError naming the file if
    it is not one (of this site and these settings), too large, or open to others."""
    data = read_secret_file(path)  # KeyFileError (a ConfigError) if open to others
    if len(data) > MAX_STATE_BYTES:
        raise ConfigError(f"{path}: state file larger than {MAX_STATE_BYTES} bytes")
    try:
        saved: Any = json.loads(data)
        if saved["format"] != STATE_FORMAT:
            raise ConfigError(f"{path}: not a {STATE_FORMAT} file")
        validator = SiteValidator.restore(site.spec, th, saved["validator"])
        after = {str(k): int(v) for k, v in saved["after_seq"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ConfigError(f"{path}: not a validator state file for site "
                          f"{site.spec.name} with these settings: {exc}") from None
    return validator, after


def save_state(path: Path, validator: SiteValidator, after: Mapping[str, int]) -> None:
    """Replace ``path`` atomically (mode 0600) with the validator's state."""
    data = json.dumps({"format": STATE_FORMAT, "after_seq": dict(after),
                       "validator": validator.snapshot()}, separators=(",", ":"))
    write_secret_file(path, data.encode(), overwrite=True)  # KeyFileError if it fails


def attest(site: SiteFile, verdict: WindowVerdict, leaves: dict[str, list[int]],
           signing: SigningKey) -> Document:
    body = attestation_for(verdict, site.stream, site.field, leaves)
    return sign_attestation(body, signing, body.window_end_ms)
