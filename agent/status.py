"""What ``edgeproof-agent status`` shows, gathered from the state directory.

The running agent writes ``status.json`` (uplink state, sensors, usage meter, service
counters) every ``service.status_interval_s`` and at shutdown; the outbox figures are read
live from ``outbox.sqlite`` and the device counters (boot, damaged outbox and credits files
moved aside) from ``state.sqlite``, so ``status`` works whether or not the agent is running.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from agent.clock import SystemClock
from agent.grants import GRANTS_FILE, GrantBook
from agent.outbox import read_stats
from protocol.errors import StorageError

STATUS_FILE = "status.json"
OUTBOX_FILE = "outbox.sqlite"
STATE_FILE = "state.sqlite"
CREDITS_FILE = "credits.sqlite"


def write_status(state_dir: Path, data: dict[str, object]) -> None:
    """Atomically replace ``status.json`` (no secrets in it). Raises StorageError."""
    path = state_dir / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.tmp")
    try:
        tmp.write_text(json.dumps(data, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"{path}: cannot write status ({exc.strerror})") from None


def collect_status(state_dir: Path) -> dict[str, object]:
    """Return the status of the agent whose state lives in ``state_dir``.

    Raises StorageError if the directory holds no agent state or a database is unreadable.
    """
    if not (state_dir / OUTBOX_FILE).exists():
        raise StorageError(f"{state_dir}: no outbox here (has the agent run with this "
                           f"state directory?)")
    state = _read_state(state_dir / STATE_FILE)
    outbox = _read_outbox(state_dir / OUTBOX_FILE, state.get("corrupt_outboxes", 0))
    doc = status_document(_read_json(state_dir / STATUS_FILE), outbox, state)
    return {"state_dir": str(state_dir), **doc, "grants": _read_grants(state_dir)}


def status_document(agent: dict[str, object], outbox: dict[str, object],
                    state: dict[str, int]) -> dict[str, object]:
    """``boot``, ``outbox``, ``credit`` and ``agent`` as ``status --json`` shows them (the
    running agent builds the same for its metrics file)."""
    raw_usage = agent.get("usage")
    usage: dict[str, object] | None = raw_usage if isinstance(raw_usage, dict) else None
    credit = {
        "accrued_micro": usage.get("accrued_micro") if usage else None,
        "sent_micro": usage.get("emitted_micro") if usage else None,
        "settled_micro": outbox.get("settled_micro"),
        "corrupt_credits": state.get("corrupt_credits", 0),
    }
    return {"boot": state.get("boot"), "outbox": outbox, "credit": credit, "agent": agent}


def _read_grants(state_dir: Path) -> dict[str, object] | None:
    """The grant book as of now (read live: refusals count even while the agent is down)."""
    if not (state_dir / GRANTS_FILE).exists():
        return None
    clock = SystemClock()
    return GrantBook(state_dir / GRANTS_FILE).status(clock.wall_ms(), clock.wall_synced())


def _read_outbox(path: Path, corrupt: int) -> dict[str, object]:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            return read_stats(conn, corrupt).as_dict()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StorageError(f"{path}: cannot read outbox ({exc})") from None


def _read_state(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            return {str(k): int(v) for k, v in conn.execute("SELECT name, value FROM state")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StorageError(f"{path}: cannot read device state ({exc})") from None


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
