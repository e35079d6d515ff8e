"""The agent as a real process: kill -9 at random moments, SIGTERM, laptop mode.

Checked from the outside only: what the real gateway logged (its HTTP API), what the
outbox file holds and what the sensors handed over (tests/agent/handover_agent.py), never
the agent's memory.
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
from protocol.record import Record, Usage, Values
from protocol.signed import parse_signed_record, record_hash
from tests.agent.responder import RealGateway, Responder
from tests.harness.waiting import within

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20
SEED = 20_240_607


def fast_config(path: Path, state_dir: Path, broker: str, gateway_key: str) -> Path:
    """Three sensors every 50 ms (60 readings/s), the default group-commit window (5 s, so
    every kill lands inside it), short batch interval: records flow at once."""
    path.write_text(f"""
[agent]
state_dir = "{state_dir}"
log_level = "warning"
[gateway]
key = "{gateway_key}"
[mqtt]
broker = "{broker}"
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


def agent(*args: str, log: Path, handover: Path | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "agent.cli", "run", *args]
    if handover is not None:
        command = [sys.executable, "-m", "tests.agent.handover_agent", "--handover",
                   str(handover), "--", *args]
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=out, cwd=ROOT)


def handed_over(path: Path) -> list[tuple[int, str, int]]:
    """Every reading the sensors handed to the agent, in order: (pid, stream, mono_ms).
    A line cut short by the kill was never returned to the agent and is left out."""
    out = []
    for line in path.read_bytes().decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and line.endswith(parts[2]):
            out.append((int(parts[0]), parts[1], int(parts[2])))
    return out


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


def test_kill_9_at_20_random_moments_loses_no_sampled_reading_and_reuses_no_seq(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    gateway = RealGateway(tmp_path / "gw", broker)
    state = tmp_path / "state"
    assert main(["keygen", "--state-dir", str(state)]) == 0
    device_id = gateway.register("killed", load_device_key(state / "device.key").public_key)
    config = fast_config(tmp_path / "agent.toml", state, broker.url, gateway.verifier)
    log = tmp_path / "agent.log"
    handover = tmp_path / "handed-over.txt"
    rng = random.Random(SEED)
    must_arrive: dict[int, bytes] = {}
    try:
        for _ in range(KILLS):
            proc = agent("--config", str(config), "--simulate", log=log, handover=handover)
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
        proc = agent("--config", str(config), "--simulate", log=log, handover=handover)
        killed = handed_over(handover)

        def arrived() -> bool:  # the last run is up; everything once committed and sampled
            records = gateway.records(device_id)
            logged = logged_hashes(records)
            return (len(logged) > before + 20 and must_arrive.keys() <= logged.keys()
                    and readings_missing(killed, records) <= KILLS)

        ok = wait_for(arrived, 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
        records = gateway.records(device_id)
        assert ok, (f"{readings_missing(killed, records)} handed-over readings not logged, "
                    f"{len(must_arrive.keys() - logged_hashes(records).keys())} committed "
                    "records missing")
        registry = gateway.device(device_id)
    finally:
        gateway.stop()
    assert not registry["equivocated"]  # no number ever carried two different records
    readings = [key for key in map(reading_key, signed_records(records)) if key is not None]
    assert len(readings) == len(set(readings))  # no reading logged twice
    sampled = handed_over(handover)
    missing = {key[1:] for key in sampled} - set(readings)
    assert len(sampled) > 20 * KILLS
    assert missing <= {key[1:] for key in in_flight(sampled)}
    # At most the one reading each killed process had taken but not yet written (the
    # microseconds between read() and write()) may be missing; in practice none is.
    logged = logged_hashes(records)
    assert sorted(logged) == list(range(len(logged)))  # no hole: nothing committed was lost
    for seq, digest in must_arrive.items():  # every record once seen committed arrived
        assert logged[seq] == digest
    raws = [bytes.fromhex(str(r["record"])) for r in records]
    signed = signed_records(records)
    for (raw, _), (_, after_rec) in pairwise(zip(raws, signed, strict=True)):
        assert after_rec.prev == record_hash(raw)  # the chain holds across every kill
    assert len({r.boot for r in signed}) >= KILLS // 2  # most kills hit a working agent
    assert committed(state / "outbox.sqlite") == {}  # the final SIGTERM flushed everything
    dead = collect_status(state)["outbox"]["dead_letters"]  # type: ignore[index]
    assert set(dead) <= {reasons.USAGE_OVERLAP}  # a re-sent claim at most, never counted
    usage = [r.body for r in signed if isinstance(r.body, Usage)]  # none if the TV was off
    assert sum(u.credit_micro for u in usage) == registry["settled_micro"]


def signed_records(records: list[dict[str, object]]) -> list[Record]:
    return [parse_signed_record(bytes.fromhex(str(r["record"])))[1] for r in records]


def reading_key(record: Record) -> tuple[str, int] | None:
    return (record.stream, record.mono_ms) if isinstance(record.body, Values) else None


def in_flight(sampled: list[tuple[int, str, int]]) -> set[tuple[int, str, int]]:
    """The last reading of each killed process: taken, perhaps not yet written, at the
    instant of the kill (the main loop handles one reading at a time)."""
    last: dict[int, tuple[int, str, int]] = {}
    for key in sampled:
        last[key[0]] = key
    newest = sampled[-1][0] if sampled else None
    return {key for pid, key in last.items() if pid != newest}


def readings_missing(sampled: list[tuple[int, str, int]],
                     records: list[dict[str, object]]) -> int:
    logged = {reading_key(r) for r in signed_records(records)}
    return sum(1 for key in sampled if key[1:] not in logged)


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
    return within(predicate, timeout_s, every_s=0.1)


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
    assert "created a new device identity" in text
    assert public in text
    status = json.loads((state / "status.json").read_text())
    assert status["uplink"]["state"] == "stopped"
    assert [s["stream"] for s in status["sensors"]] == ["climate", "cpu", "tv", "presence"]
