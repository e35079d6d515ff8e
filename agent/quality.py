"""What validators say about this device: the latest quality verdicts that reached it.

A quality attestation (PROTOCOL.md §20) naming this device arrives on the policy topic like
a consent. It changes nothing the device does; the owner sees it in ``edgeproof-agent
status`` (a sensor turning suspect or faulty). The device checks the signature and that the
attestation names it; the gateway only logs attestations of registered validators that
could read the records named, and the validator is shown by its signer id.

Kept in ``quality.json`` in the state directory: the latest verdict per (validator, site),
at most ``MAX_NOTES`` (the oldest windows are dropped), written atomically.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from protocol.errors import StorageError
from protocol.quality import QualityAttestation

QUALITY_FILE = "quality.json"
MAX_NOTES = 16


class QualityNotes:
    """The latest verdict on this device from each validator and site."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def note(self, validator: bytes, body: QualityAttestation, device_id: bytes) -> bool:
        """Keep the verdict on ``device_id`` unless a newer window of the same validator and
        site is kept already; return whether it was kept. Raises StorageError, KeyError if
        the attestation does not name the device."""
        sensor = body.of(device_id)
        key = f"{validator.hex()}/{body.site}"
        entry = {"validator": validator.hex(), "site": body.site,
                 "field": f"{body.stream}/{body.field}", "window_start_ms": body.window_start_ms,
                 "window_ms": body.window_ms, "state": sensor.state,
                 "reasons": list(sensor.reasons)}
        with self._lock:
            notes = read_notes(self._path)
            old = notes.get(key)
            if old is not None and _start(old) >= body.window_start_ms:
                return False
            notes[key] = entry
            while len(notes) > MAX_NOTES:
                del notes[min(notes, key=lambda k: _start(notes[k]))]
            self._write(notes)
        return True

    def _write(self, notes: dict[str, dict[str, object]]) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(notes, sort_keys=True))
            os.replace(tmp, self._path)
        except OSError as exc:
            raise StorageError(f"{self._path}: cannot write ({exc.strerror})") from None


def _start(note: dict[str, object]) -> int:
    start = note.get("window_start_ms")
    return start if isinstance(start, int) else 0


def read_notes(path: Path) -> dict[str, dict[str, object]]:
    """The kept verdicts by "validator/site" (empty if none or unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} \
        if isinstance(data, dict) else {}
