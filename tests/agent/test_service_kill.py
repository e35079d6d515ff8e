"""The agent as a real process: kill -9 at random moments, SIGTERM, laptop mode.

Checked from the outside only: what the receipt responder logged and what the outbox file
holds, never the agent's memory.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

from agent.cli import main
from firmware_sim.broker import MosquittoBroker
from protocol.keys import load_device_key
from protocol.record import Usage
from protocol.signed import record_hash
from tests.agent.responder import Responder

KILLS = 20
SEED = 20_240_607


def fast_config(path: Path, state_dir: Path, broker: str, gateway_key: str) -> Path:
    """Sensors every 50 ms, short commit window and batch interval: records flow at once."""
    path.write_text(f"""
[agent]
state_dir = "{state_dir}"
log_level = "warning"
[gateway]
key = "{gateway_key}"
[mqtt]
broker = "{broker}"
[outbox]
commit_window_s = 0.1
[uplink]
batch_interval_s = 0.1
receipt_timeout_s = 2.0
backoff_min_s = 0.1
backoff_max_s = 0.5
[service]
final_flush_s = 10.0
status_interval_s = 0.5
[[sensors]]
kind = "cpu_temp"
stream = "cpu"
interval_s = 0.05
[[sensors]]
kind = "power_sense"
stream = "tv"
pin = 17
interval_s = 0.05
[[sensors]]
kind = "motion"
stream = "presence"
pin = 27
interval_s = 0.05
[usage]
input = "tv"
rate_micro_per_hour = 3600000
checkpoint_interval_s = 0.2
report_interval_s = 0.3
""")
    return path


def agent(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", *args],
                                stdout=out, stderr=out)


def committed(outbox: Path) -> dict[int, bytes]:
    """The records a fresh reader finds committed in the outbox: seq -> record hash."""
    if not outbox.exists():
        return {}
    conn = sqlite3.connect(outbox, timeout=10)
    try:
        rows = conn.execute("SELECT seq, raw FROM records").fetchall()
    except sqlite3.OperationalError:  # killed while creating the file: no table yet
        return {}
    finally:
        conn.close()
    return {int(seq): hashlib.sha256(raw).digest() for seq, raw in rows}


def test_kill_9_at_20_random_moments_never_reuses_a_seq_and_loses_nothing(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    responder = Responder(broker.url).start()
    state = tmp_path / "state"
    assert main(["keygen", "--state-dir", str(state)]) == 0
    device_id = responder.register(load_device_key(state / "device.key").public_key)
    config = fast_config(tmp_path / "agent.toml", state, broker.url, responder.verifier_key)
    log = tmp_path / "agent.log"
    rng = random.Random(SEED)
    must_arrive: dict[int, bytes] = {}
    try:
        for _ in range(KILLS):
            proc = agent("--config", str(config), "--simulate", log=log)
            time.sleep(rng.uniform(0.3, 2.0))
            proc.kill()  # SIGKILL: no flush, no close, an open transaction in flight
            assert proc.wait(10) == -signal.SIGKILL
            for seq, digest in committed(state / "outbox.sqlite").items():
                assert must_arrive.setdefault(seq, digest) == digest  # never reused
        before = len(responder.logged[device_id].records) if device_id in responder.logged else 0
        proc = agent("--config", str(config), "--simulate", log=log)

        def arrived() -> bool:  # the last run is up and everything once committed is in
            logged = responder.logged.get(device_id)
            return (logged is not None and len(logged.records) > before + 20
                    and must_arrive.keys() <= logged.records.keys())

        ok = responder.wait_for(arrived, 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
        assert ok
    finally:
        responder.stop()
    logged = responder.logged[device_id]
    assert logged.equivocations == []  # no number ever carried two different records
    seqs = sorted(logged.records)
    assert seqs == list(range(len(seqs)))  # no hole: nothing committed was lost
    for seq, digest in must_arrive.items():  # every record once seen committed arrived
        assert logged.records[seq].hash == digest
    records = [logged.records[s] for s in seqs]
    for before, after in pairwise(records):
        assert after.record.prev == record_hash(before.raw)
    assert len({r.record.boot for r in records}) >= KILLS // 2  # most kills hit a live agent
    assert committed(state / "outbox.sqlite") == {}  # the final SIGTERM flushed everything
    usage = sorted((r.record.boot, r.record.body.start_mono_ms, r.record.body.end_mono_ms)
                    for r in records if isinstance(r.record.body, Usage))
    for a, b in pairwise(usage):
        assert a[0] != b[0] or a[2] <= b[1]  # no usage interval counted twice


def test_laptop_mode_creates_an_identity_says_so_and_stops_cleanly_on_sigterm(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    responder = Responder(broker.url).start()
    state = tmp_path / "state"
    log = tmp_path / "agent.log"
    proc = agent("--simulate", "--state-dir", str(state), "--broker", broker.url,
                 "--gateway-key", responder.verifier_key, log=log)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (state / "status.json").exists():
            time.sleep(0.1)
        assert (state / "device.key").stat().st_mode & 0o777 == 0o600
        public = load_device_key(state / "device.key").public_key.hex()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        responder.stop()
    text = log.read_text()
    assert "created a new device identity" in text and public in text
    status = json.loads((state / "status.json").read_text())
    assert status["uplink"]["state"] == "stopped"
    assert [s["stream"] for s in status["sensors"]] == ["climate", "cpu", "tv", "presence"]
