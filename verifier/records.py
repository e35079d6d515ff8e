"""``edgeproof-verify records``: a device's readings with their times, as they are logged.

Pages through the gateway's public API (``/v1/devices/{id}/records``), verifies every
record's signature (:class:`verifier.recipient.Opener`) and prints one line, or one JSON
object, per reading: its sequence number, its wall time (ISO 8601, UTC) and whether the
device's clock was synchronised then, its stream, and its values. Plaintext streams need no
key; sealed ones open with the recipient's key and otherwise show as ``sealed (no key)``.
With ``follow`` it keeps polling for new records until interrupted. Memory stays bounded:
one page at a time, plus the device's key epochs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from protocol.errors import TransportError
from protocol.keys import RecipientKey
from verifier.client import GatewayClient
from verifier.recipient import Opened, Opener

PAGE = 1000


@dataclass(frozen=True)
class Follow:
    """Whether and how often ``records`` polls for new records; ``sleep`` injectable."""

    enabled: bool
    interval_s: float
    sleep: Callable[[float], None]


def wall_time(wall_ms: int) -> str:
    """``wall_ms`` (ms since the Unix epoch) as ISO 8601 UTC with milliseconds."""
    when = datetime.fromtimestamp(wall_ms / 1000, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def as_line(o: Opened) -> str:
    """One reading as a line of text (times in UTC; ``synced``/``unsynced`` clock)."""
    status = "sealed (no key)" if o.status == "sealed" else o.status
    shown = ", ".join(f"{m.value} {m.unit}" for m in o.values)
    if o.status not in ("plaintext", "decrypted", "sealed"):
        shown = o.detail
    when = wall_time(o.wall_ms) if o.status != "error" else "-"
    clock = ("synced" if o.clock_synced else "unsynced") if o.status != "error" else "-"
    return f"{o.seq:>8}  {when:<24}  {clock:<8}  {o.stream:<16} {status:<15} {shown}".rstrip()


def as_json(o: Opened, device_id: bytes) -> str:
    """One reading as one JSON object (one line)."""
    return json.dumps({
        "device_id": device_id.hex(), "seq": o.seq, "stream": o.stream,
        "wall_time": wall_time(o.wall_ms) if o.status != "error" else None,
        "wall_ms": o.wall_ms, "clock_synced": o.clock_synced, "status": o.status,
        "detail": o.detail,
        "values": [{"value": str(m.value), "unit": m.unit, "mantissa": m.mantissa,
                    "exponent": m.exponent} for m in o.values],
    }, sort_keys=True)


def show_records(client: GatewayClient, device_id: bytes, recipient: RecipientKey | None,
                 *, streams: set[str] | None, json_lines: bool, follow: Follow,
                 out: TextIO) -> int:
    """Print the device's readings (and with ``follow`` the new ones, until interrupted).

    Returns the number of records whose signature or sealing failed (shown as ``error``).
    Raises TransportError / MalformedRecord when the gateway cannot be read (following, a
    gateway that goes away is said once on stderr and polled again until it is back), and
    lets KeyboardInterrupt through (the CLI turns it into exit 130).
    """
    opener = Opener(client.device_keys(device_id), recipient, streams)
    after, errors, first, outage = -1, 0, True, False
    while True:
        try:
            page = client.device_records(device_id, after, PAGE)
        except TransportError as exc:
            if first or not follow.enabled:
                raise
            if not outage:
                print(f"edgeproof-verify: {exc}; still polling", file=sys.stderr, flush=True)
            outage = True
            follow.sleep(follow.interval_s)
            continue
        if outage:
            print("edgeproof-verify: the gateway answers again", file=sys.stderr, flush=True)
            outage = False
        if page:
            if follow.enabled and not first:
                opener.keys = client.device_keys(device_id)  # the device may have rotated
            for o in opener.feed(page):
                errors += o.status == "error"
                print(as_json(o, device_id) if json_lines else as_line(o), file=out,
                      flush=follow.enabled)
            after = page[-1].seq
        first = False
        if len(page) == PAGE:
            continue
        if not follow.enabled:
            return errors
        follow.sleep(follow.interval_s)

