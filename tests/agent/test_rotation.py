"""Key rotation in the agent: crash at every step, the real gateway, kill -9 of the process.

Unit part: the real service with its real SQLite files in ``tmp_path``; a crash is a
``Crash`` raised by the rotation's step hook, after which the connections are closed without
committing (what ``kill -9`` leaves), and a new service starts on the same files. Receipts
are applied to the outbox as the uplink would apply them.

End-to-end part: a real Mosquitto and the real gateway (in this process); the agent in
this process, or as a process killed with SIGKILL right after it committed the rotation.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.cli import main as agent_main
from agent.clock import Clock, ManualClock, SystemClock
from agent.config import AgentConfig, parse_config
from agent.identity import KeyFiles, create_identity
from agent.service import AgentService, ServiceOptions
from agent.status import collect_status
from firmware_sim.broker import MosquittoBroker
from protocol import reasons
from protocol.keys import SigningKey, load_device_key, save_device_key
from protocol.receipt import Outcome, Receipt, Status, hash_prefix
from protocol.record import KeyRotation, Measurement
from protocol.signed import parse_signed_record, record_hash, verify_signed_record
from tests.agent.responder import RealGateway, Responder
from tests.agent.test_service_kill import agent, fast_config, running, wait_for
from verifier.cli import main as verify_main

UNREACHABLE = "mqtt://127.0.0.1:9"  # discard port: nothing listens
REPO = Path(__file__).resolve().parents[2]


class Crash(BaseException):
    """Stands for kill -9 at one step: nothing after it runs, nothing is closed."""


class CrashAt:
    """A rotation step hook that crashes at step ``name`` (once ``after`` has been seen)."""

    def __init__(self, name: str | None, after: str | None = None) -> None:
        self.name, self.after, self.armed = name, after, after is None

    def __call__(self, step: str) -> None:
        if step == self.after:
            self.armed = True
        elif self.armed and step == self.name:
            raise Crash(step)


def config(state: Path, broker: str, gateway_key: str, **service: Any) -> AgentConfig:
    return parse_config({
        "agent": {"state_dir": str(state)},
        "mqtt": {"broker": broker},
        "gateway": {"key": gateway_key},
        "outbox": {"commit_window_s": 0.05},
        "uplink": {"batch_interval_s": 0.05, "receipt_timeout_s": 2.0, "backoff_min_s": 0.1,
                   "backoff_max_s": 0.5},
        "service": {"final_flush_s": 0.0, "status_interval_s": 0.5, **service},
    }, state)


@pytest.fixture
def gateway_key() -> str:
    return Responder("mqtt://127.0.0.1:1").verifier_key


def start(cfg: AgentConfig, clock: Clock, hook: CrashAt | None = None) -> AgentService:
    service = AgentService(cfg, clock, options=ServiceOptions(rotation_step=hook))
    service.start()
    return service


def kill(service: AgentService) -> None:
    """Leave the files as kill -9 would: the open transaction is lost, nothing else runs."""
    if getattr(service, "uplink", None) is not None:
        assert service.uplink is not None
        service.uplink.stop(timeout_s=5)
    # Closing a connection without COMMIT rolls the open transaction back, as a dead
    # process's would be at the next open. Private on purpose: no public call may commit.
    service.outbox._conn.close()  # noqa: SLF001
    service.state._conn.close()  # noqa: SLF001


def write(service: AgentService, n: int) -> None:
    for i in range(n):
        service.writer.write_values("cpu", (Measurement(i, -1, "Cel"),),
                                    service.clock.mono_ms())
    service.outbox.commit()


Records = dict[int, tuple[str, bytes, str | None]]  # seq -> (stream, raw, dead-letter reason)


def stored(state: Path) -> Records:
    """Everything committed in the outbox file: seq -> (stream, raw, dead-letter reason)."""
    conn = sqlite3.connect(state / "outbox.sqlite")
    try:
        rows: Records = {int(s): (str(t), bytes(r), None)
                for s, t, r in conn.execute("SELECT seq, stream, raw FROM records")}
        rows |= {int(s): (str(t), bytes(r), str(why)) for s, t, r, why in conn.execute(
            "SELECT seq, stream, raw, reason FROM dead_letters")}
    finally:
        conn.close()
    return dict(sorted(rows.items()))


def answer(service: AgentService, delivered: Records, rotation: Status = Status.ACCEPTED,
           reason: str | None = None) -> None:
    """Apply a receipt for everything the uplink may send now (as the gateway answers);
    what it takes from the outbox is added to ``delivered``."""
    outcomes = []
    for seq, raw in service.outbox.unsent(-1, 10_000, 1 << 30):
        stream = parse_signed_record(raw)[1].stream
        status = rotation if stream == "rotation" else Status.ACCEPTED
        if status is Status.REJECTED:
            outcomes.append(Outcome(seq, hash_prefix(raw), status, reason=reason))
        else:
            outcomes.append(Outcome(seq, hash_prefix(raw), status, leaf_index=seq))
            delivered[seq] = (stream, raw, None)
    service.outbox.apply_receipt(Receipt(service.identity.device_id, 1, tuple(outcomes),
                                         "test\n", 0))


def rotation_seqs(records: Records) -> list[int]:
    return [seq for seq, (stream, _, _) in records.items() if stream == "rotation"]


def check_chain_and_keys(records: Records, device_id: bytes,
                         keys: list[tuple[int, bytes]]) -> None:
    """Contiguous seqs, ``prev`` links, kid = the device id, each record signed by the key
    in force at its seq (``keys``: (from_seq, public key), oldest first)."""
    assert list(records) == list(range(len(records)))
    raws = [raw for _, raw, _ in records.values()]
    for before, after in pairwise(raws):
        assert parse_signed_record(after)[1].prev == record_hash(before)
    for seq, (_, raw, _) in records.items():
        key = [k for start_seq, k in keys if start_seq <= seq][-1]
        verify_signed_record(raw, key, device_id)


@pytest.fixture
def device(tmp_path: Path) -> tuple[Path, SigningKey, SigningKey, bytes]:
    """A state dir with an enrolled key K0 and a next key K1 waiting in device.next.key."""
    state = tmp_path / "state"
    identity = create_identity(state / "device.key")
    k1 = SigningKey.generate()
    save_device_key(KeyFiles(state / "device.key").next, k1)
    return state, identity.key, k1, identity.device_id


# --- crash at every step (real SQLite files) ---------------------------------------------


@pytest.mark.parametrize("step", [None, "signing", "noted", "announced", "stashed", "swapped"])
def test_kill_at_any_announcing_step_leaves_one_rotation_and_the_new_key_after_it(
        device: tuple[Path, SigningKey, SigningKey, bytes], gateway_key: str,
        step: str | None) -> None:
    state, k0, k1, device_id = device
    files = KeyFiles(state / "device.key")
    cfg = config(state, UNREACHABLE, gateway_key)
    clock = ManualClock()
    service = AgentService(cfg, clock, options=ServiceOptions(rotation_step=CrashAt(step)))
    try:
        service.start()
        assert step is None
        write(service, 3)
        service.shutdown()
    except Crash:
        kill(service)
    crashed = stored(state)
    assert len(rotation_seqs(crashed)) == (0 if step in ("signing", "noted") else 1)
    service = start(cfg, clock)  # restart: finishes the swap or announces afresh
    try:
        write(service, 3)
        records = stored(state)
        (r,) = rotation_seqs(records)
        assert parse_signed_record(records[r][1])[1].body == KeyRotation(k1.public_key)
        check_chain_and_keys(records, device_id, [(0, k0.public_key), (r + 1, k1.public_key)])
        assert load_device_key(files.current).public_key == k1.public_key
        assert load_device_key(files.prev).public_key == k0.public_key
        assert not files.next.exists()
        assert files.current.stat().st_mode & 0o777 == 0o600
        assert files.prev.stat().st_mode & 0o777 == 0o600
        # Held: nothing after the rotation record goes out before the gateway answered it.
        assert max(seq for seq, _ in service.outbox.unsent(-1, 1000, 1 << 30)) == r
        assert service.status()["rotation"]["state"] == "announced"  # type: ignore[index]
        answer(service, {})
        service.step()
        assert service.rotation.state == "accepted"
        assert not files.prev.exists()  # a stolen old key can sign nothing new
        assert max(seq for seq, _ in service.outbox.unsent(-1, 1000, 1 << 30)) == max(records)
        assert service.identity.device_id == device_id
        assert service.identity.key.public_key == k1.public_key
    finally:
        service.shutdown()


@pytest.mark.parametrize("where", ["receipt_not_committed", "accepted"])
def test_kill_around_the_accepting_receipt_finishes_the_rotation_at_restart(
        device: tuple[Path, SigningKey, SigningKey, bytes], gateway_key: str,
        where: str) -> None:
    state, k0, k1, device_id = device
    files = KeyFiles(state / "device.key")
    cfg = config(state, UNREACHABLE, gateway_key)
    clock = ManualClock()
    service = start(cfg, clock, CrashAt("accepted"))
    write(service, 2)
    delivered: Records = {}
    answer(service, delivered)
    if where == "receipt_not_committed":
        kill(service)  # the receipt's transaction was still open: the record is held again
    else:
        with pytest.raises(Crash):
            service.step()
        kill(service)
    service = start(cfg, clock)
    try:
        if where == "receipt_not_committed":
            assert service.rotation.state == "announced"
            answer(service, delivered, Status.DUPLICATE)  # re-sent: a duplicate
        service.step()
        assert service.rotation.state == "accepted"
        assert not files.prev.exists()
        assert not files.next.exists()
        write(service, 2)
        records = dict(sorted((delivered | stored(state)).items()))
        (r,) = rotation_seqs(records)
        assert load_device_key(files.current).public_key == k1.public_key
        check_chain_and_keys(records, device_id, [(0, k0.public_key), (r + 1, k1.public_key)])
    finally:
        service.shutdown()


@pytest.mark.parametrize(("step", "after"), [(None, None), ("rejected", None),
                                             ("stashed", "rejected"), ("swapped", "rejected")])
def test_rejected_rotation_returns_to_the_old_key_even_after_a_crash(
        device: tuple[Path, SigningKey, SigningKey, bytes], gateway_key: str,
        step: str | None, after: str | None) -> None:
    state, k0, k1, device_id = device
    files = KeyFiles(state / "device.key")
    cfg = config(state, UNREACHABLE, gateway_key)
    clock = ManualClock()
    service = start(cfg, clock, CrashAt(step, after))
    write(service, 2)  # signed with the new key, held behind the rotation record
    answer(service, {}, Status.REJECTED, reasons.BAD_ROTATION)
    try:
        service.step()
        assert step is None
    except Crash:
        kill(service)
        service = start(cfg, clock)
    try:
        assert service.rotation.state == "rejected"
        assert load_device_key(files.current).public_key == k0.public_key
        assert load_device_key(files.rejected).public_key == k1.public_key
        assert not files.prev.exists()
        assert not files.next.exists()
        write(service, 2)
        records = stored(state)
        (r,) = rotation_seqs(records)
        assert records[r][2] == reasons.BAD_ROTATION  # a dead letter with the reason
        # The two held records carry the new key (the gateway will refuse them); after the
        # return every record is signed with the old key again.
        check_chain_and_keys(records, device_id, [(0, k0.public_key), (r + 1, k1.public_key),
                                                  (r + 3, k0.public_key)])
        status = service.status()["rotation"]
        assert isinstance(status, dict)
        assert status["reason"] == reasons.BAD_ROTATION
        if step is None:  # the running agent says so loudly; a restarted one keeps the state
            assert status["counters"] == {"announced": 1, "rejected": 1}
            # The line the service sends to systemd (STATUS=); no public reader.
            assert "KEY ROTATION REJECTED" in service._status_line()  # noqa: SLF001
    finally:
        service.shutdown()
    # The refused key is never announced again, even if someone puts it back.
    save_device_key(files.next, k1)
    service = start(cfg, clock)
    try:
        assert service.rotation.state == "rejected"
        assert "already rejected" in (service.rotation.error or "")
        assert len(rotation_seqs(stored(state))) == 1
    finally:
        service.shutdown()


def test_next_key_readable_by_others_is_not_announced_and_is_reported(
        device: tuple[Path, SigningKey, SigningKey, bytes], gateway_key: str) -> None:
    state, k0, _k1, _device_id = device
    files = KeyFiles(state / "device.key")
    files.next.chmod(0o644)
    service = start(config(state, UNREACHABLE, gateway_key), ManualClock())
    try:
        write(service, 1)
        assert rotation_seqs(stored(state)) == []
        assert service.identity.key.public_key == k0.public_key
        assert "chmod 600" in str(service.status()["rotation"]["error"])  # type: ignore[index]
    finally:
        service.shutdown()


# --- end to end: real Mosquitto, real gateway --------------------------------------------


@pytest.fixture
def gateway(tmp_path: Path, broker: MosquittoBroker) -> Iterator[RealGateway]:
    gw = RealGateway(tmp_path / "gw", broker)
    yield gw
    gw.stop()


def run_until(service: AgentService, done: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """Drive the main loop (one reading per iteration) until ``done()``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return True
        service.step()
        time.sleep(0.02)
    return done()


def device_keys(gateway: RealGateway, device_id: str) -> list[tuple[int, str]]:
    reply = httpx.get(f"{gateway.url}/v1/devices/{device_id}/keys")
    assert reply.status_code == 200, reply.text
    return [(k["from_seq"], k["public_key"]) for k in reply.json()["keys"]]


def verify_leaf(gateway: RealGateway, index: int) -> int:
    # --wait: a leaf just logged is covered only by the gateway's next checkpoint; the
    # verifier waits for that condition (bounded) instead of racing the checkpoint timer.
    return verify_main(["record", "--gateway", gateway.url, "--leaf", str(index),
                        "--gateway-key", gateway.verifier, "--wait", "--json"])


def test_records_before_and_after_a_rotation_are_accepted_and_verify_with_their_keys(
        device: tuple[Path, SigningKey, SigningKey, bytes], broker: MosquittoBroker,
        gateway: RealGateway, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state, k0, k1, _ = device
    files = KeyFiles(state / "device.key")
    files.next.rename(state.parent / "next.key")  # the operator has not rotated yet
    device_id = gateway.register("rotating", k0.public_key)
    cfg = config(state, broker.url, gateway.verifier, final_flush_s=10.0)
    service = start(cfg, SystemClock())
    try:
        write(service, 5)
        assert run_until(service, lambda: service.outbox.stats().depth == 0)
    finally:
        service.shutdown()
    (state.parent / "next.key").rename(files.next)  # `device rotate`, copied over
    service = start(cfg, SystemClock())
    try:
        write(service, 5)
        assert run_until(service, lambda: service.rotation.state == "accepted"
                         and service.outbox.stats().depth == 0)
    finally:
        service.shutdown()
    logged = gateway.records(device_id)
    rotations = [r for r in logged if r["stream"] == "rotation"]
    assert len(rotations) == 1
    r = rotations[0]["seq"]
    assert [x["seq"] for x in logged] == list(range(r + 6))  # nothing refused, no hole
    assert device_keys(gateway, device_id) == [(0, k0.public_key.hex()),
                                                (r + 1, k1.public_key.hex())]
    records: Records = {x["seq"]: ("", bytes.fromhex(x["record"]), None) for x in logged}
    check_chain_and_keys(records, bytes.fromhex(device_id),
                         [(0, k0.public_key), (r + 1, k1.public_key)])
    capsys.readouterr()
    for x in (logged[0], rotations[0], logged[-1]):  # old key, rotation, new key
        assert verify_leaf(gateway, x["index"]) == 0, capsys.readouterr().err
    # A record signed with the new key, checked offline from its saved bundle alone: the
    # bundle carries the enrolment key and the rotation record with its inclusion proof.
    saved = tmp_path / "after-rotation.json"
    assert verify_main(["record", "--gateway", gateway.url, "--leaf", str(logged[-1]["index"]),
                        "--gateway-key", gateway.verifier, "--save", str(saved)]) == 0
    capsys.readouterr()
    bundle = json.loads(saved.read_text())
    assert bundle["device_public_key"] == k0.public_key.hex()
    assert [bytes.fromhex(x["record"]) for x in bundle["rotations"]] == [
        bytes.fromhex(rotations[0]["record"])]
    offline = ["bundle", str(saved), "--gateway-key", gateway.verifier]
    assert verify_main(offline) == 0, capsys.readouterr().err
    assert "rotation at seq" in capsys.readouterr().out
    good = dict(bundle)
    tampered = bytearray.fromhex(bundle["rotations"][0]["record"])
    tampered[-1] ^= 1
    for broken in ([], [{**bundle["rotations"][0], "record": tampered.hex()}]):
        saved.write_text(json.dumps({**good, "rotations": broken}))
        assert verify_main(offline) == 1
        assert "FAILED: record signature" in capsys.readouterr().err
    assert collect_status(state)["outbox"]["dead_letters"] == {}  # type: ignore[index]
    assert not files.prev.exists()


def test_gateway_rejecting_the_rotation_leaves_the_device_signing_acceptably(
        device: tuple[Path, SigningKey, SigningKey, bytes], broker: MosquittoBroker,
        gateway: RealGateway, capsys: pytest.CaptureFixture[str]) -> None:
    state, k0, k1, _ = device
    files = KeyFiles(state / "device.key")
    device_id = gateway.register("rotating", k0.public_key)
    gateway.register("squatter", k1.public_key)  # the next key is in use: bad_rotation
    cfg = config(state, broker.url, gateway.verifier, final_flush_s=10.0)
    service = start(cfg, SystemClock())
    try:
        write(service, 3)  # new key, held until the gateway answers the rotation
        assert run_until(service, lambda: service.rotation.state == "rejected")
        write(service, 3)  # the old key again
        assert run_until(service, lambda: service.outbox.stats().depth == 0)
    finally:
        service.shutdown()
    status = collect_status(state)
    assert status["outbox"]["dead_letters"] == {  # type: ignore[index]
        reasons.BAD_ROTATION: 1, reasons.BAD_SIGNATURE: 3}
    rotation = status["agent"]["rotation"]  # type: ignore[index]
    assert rotation["state"] == "rejected"
    assert rotation["reason"] == reasons.BAD_ROTATION
    assert agent_main(["status", "--state-dir", str(state)]) == 0
    assert "key rotation  rejected" in capsys.readouterr().out
    logged = gateway.records(device_id)
    assert [x["stream"] for x in logged].count("rotation") == 0
    assert len(logged) == 3  # the 3 records signed with the old key after the return
    assert device_keys(gateway, device_id) == [(0, k0.public_key.hex())]
    assert load_device_key(files.current).public_key == k0.public_key
    assert verify_leaf(gateway, logged[-1]["index"]) == 0


def test_kill_9_right_after_committing_the_rotation_then_restart_rotates_once(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    gateway = RealGateway(tmp_path / "gw", broker)
    state = tmp_path / "state"
    assert agent_main(["keygen", "--state-dir", str(state)]) == 0
    files = KeyFiles(state / "device.key")
    k0 = load_device_key(files.current)
    device_id = gateway.register("killed", k0.public_key)
    cfg = fast_config(tmp_path / "agent.toml", state, broker.url, gateway.verifier)
    log = tmp_path / "agent.log"
    k1 = SigningKey.generate()
    try:
        proc = agent("--config", str(cfg), "--simulate", log=log)  # some records first
        assert wait_for(lambda: len(gateway.records(device_id)) >= 10, 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
        save_device_key(files.next, k1)
        with log.open("ab") as out:
            killed = subprocess.Popen(
                [sys.executable, "-m", "tests.agent.rotation_agent", "--kill-at", "announced",
                 "--", "--config", str(cfg), "--simulate"], cwd=REPO, stdout=out, stderr=out)
        assert killed.wait(60) == -signal.SIGKILL, log.read_text()[-2000:]
        assert len(rotation_seqs(stored(state))) == 1  # committed, then killed
        assert load_device_key(files.current).public_key == k0.public_key  # not swapped yet
        proc = agent("--config", str(cfg), "--simulate", log=log)
        assert wait_for(lambda: running(state, proc.pid), 60)

        def rotated_and_flowing() -> bool:
            logged = gateway.records(device_id)
            seqs = [x["seq"] for x in logged if x["stream"] == "rotation"]
            return bool(seqs) and logged[-1]["seq"] > seqs[0] + 10 and not files.prev.exists()

        ok = wait_for(rotated_and_flowing, 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
        assert ok, log.read_text()[-2000:]
        logged = gateway.records(device_id)
        registry = gateway.device(device_id)
    finally:
        gateway.stop()
    rotations = [x["seq"] for x in logged if x["stream"] == "rotation"]
    assert len(rotations) == 1  # no second rotation record after the restart
    r = rotations[0]
    assert not registry["equivocated"]
    records: Records = {x["seq"]: ("", bytes.fromhex(x["record"]), None) for x in logged}
    check_chain_and_keys(records, bytes.fromhex(device_id),
                         [(0, k0.public_key), (r + 1, k1.public_key)])
    dead = collect_status(state)["outbox"]["dead_letters"]  # type: ignore[index]
    assert set(dead) <= {reasons.USAGE_OVERLAP}  # a re-sent usage claim at most
