"""The agent as a real process: kill -9 at random moments, SIGTERM, laptop mode.

Checked from the outside only: what the real gateway logged (its HTTP API) and what the
outbox file holds, never the agent's memory.
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
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

from agent.cli import main
from agent.status import collect_status
from firmware_sim.broker import MosquittoBroker
from protocol import reasons
from protocol.keys import load_device_key
from protocol.record import Usage
from protocol.signed import parse_signed_record, record_hash
from tests.agent.responder import RealGateway, Responder

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
    gateway = RealGateway(tmp_path / "gw", broker)
    state = tmp_path / "state"
    assert main(["keygen", "--state-dir", str(state)]) == 0
    device_id = gateway.register("killed", load_device_key(state / "device.key").public_key)
    config = fast_config(tmp_path / "agent.toml", state, broker.url, gateway.verifier)
    log = tmp_path / "agent.log"
    rng = random.Random(SEED)
    must_arrive: dict[int, bytes] = {}
    try:
        for _ in range(KILLS):
            proc = agent("--config", str(config), "--simulate", log=log)
            if rng.random() < 0.2:  # now and then while it is still starting up
                time.sleep(rng.uniform(0.0, 0.5))
            else:  # mostly while it samples, commits and sends
                assert wait_for(lambda p=proc: running(state, p.pid), 60)
                time.sleep(rng.uniform(0.0, 0.6))
            proc.kill()  # SIGKILL: no flush, no close, an open transaction in flight
            assert proc.wait(10) == -signal.SIGKILL
            for seq, digest in committed(state / "outbox.sqlite").items():
                assert must_arrive.setdefault(seq, digest) == digest  # never reused
        before = len(gateway.records(device_id))
        proc = agent("--config", str(config), "--simulate", log=log)

        def arrived() -> bool:  # the last run is up and everything once committed is in
            logged = logged_hashes(gateway.records(device_id))
            return len(logged) > before + 20 and must_arrive.keys() <= logged.keys()

        ok = wait_for(arrived, 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
        assert ok
        records = gateway.records(device_id)
        registry = gateway.device(device_id)
    finally:
        gateway.stop()
    assert not registry["equivocated"]  # no number ever carried two different records
    logged = logged_hashes(records)
    assert sorted(logged) == list(range(len(logged)))  # no hole: nothing committed was lost
    for seq, digest in must_arrive.items():  # every record once seen committed arrived
        assert logged[seq] == digest
    raws = [bytes.fromhex(r["record"]) for r in records]
    signed = [parse_signed_record(raw)[1] for raw in raws]
    for (raw, _), (_, after_rec) in pairwise(zip(raws, signed, strict=True)):
        assert after_rec.prev == record_hash(raw)  # the chain holds across every kill
    assert len({r.boot for r in signed}) >= KILLS // 2  # most kills hit a working agent
    assert committed(state / "outbox.sqlite") == {}  # the final SIGTERM flushed everything
    dead = collect_status(state)["outbox"]["dead_letters"]  # type: ignore[index]
    assert set(dead) <= {reasons.USAGE_OVERLAP}  # a re-sent claim at most, never counted
    usage = [r.body for r in signed if isinstance(r.body, Usage)]  # none if the TV was off
    assert sum(u.credit_micro for u in usage) == registry["settled_micro"]


def running(state: Path, pid: int) -> bool:
    """Whether process ``pid`` has written status.json (it does so in its first loop)."""
    try:
        return int(json.loads((state / "status.json").read_text())["pid"]) == pid
    except (OSError, ValueError, KeyError):
        return False


def logged_hashes(records: list[dict[str, object]]) -> dict[int, bytes]:
    return {int(str(r["seq"])): hashlib.sha256(bytes.fromhex(str(r["record"]))).digest()
            for r in records}


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_laptop_mode_creates_an_identity_says_so_and_stops_cleanly_on_sigterm(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    responder = Responder(broker.url).start()
    state = tmp_path / "state"
    log = tmp_path / "agent.log"
    proc = agent("--simulate", "--state-dir", str(state), "--broker", broker.url,
                 "--gateway-key", responder.verifier_key, log=log)
    try:
        deadline = time.monotonic() + 60
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
