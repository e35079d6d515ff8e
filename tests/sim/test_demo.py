"""``edgeproof-sim demo`` as a user runs it: a real broker, gateway and agents come up, a
sealed reading is proved offline and opened by its recipient only, and nothing the demo
started survives it, whether it ran to the end, was cut short by Ctrl-C, or was
terminated."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from firmware_sim.demo_agent import world_offset_s
from firmware_sim.hardware import TvSchedule
from firmware_sim.procs import pid_alive

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 300  # a bound for a slow, loaded machine; finish() returns at exit
ROOM_DEVICES = 3  # the quality site's agents (firmware_sim/demo_quality.py)
STORY_TIMEOUT_S = 180  # set-up and the contract story, before the devices' run begins


@dataclass
class DemoRun:
    process: subprocess.Popen[str]
    lines: queue.Queue[str]

    def wait_for_line(self, needle: str, timeout_s: float = 60) -> None:
        self.wait_for(lambda line: needle in line, repr(needle), timeout_s)

    def wait_for(self, matches: Callable[[str], bool], what: str,
                 timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.process.poll() is None, "the demo exited before: " + what
                continue
            if matches(line):
                return
        raise AssertionError(f"no {what} from the demo within {timeout_s} s")

    def finish(self) -> tuple[int, dict[str, Any]]:
        out, _ = self.process.communicate(timeout=DEMO_TIMEOUT_S)
        return self.process.returncode, json.loads(out)


def receipted_and_checkpointed(line: str) -> bool:
    """A progress line saying records were receipted and a checkpoint covers some."""
    found = re.search(r" (\d+) receipted,.*latest covers (\d+)\)", line)
    return found is not None and int(found[1]) > 0 and int(found[2]) > 0


@pytest.fixture
def start_demo() -> Iterator[Any]:
    runs: list[DemoRun] = []

    def start(*args: str) -> DemoRun:
        proc = subprocess.Popen([sys.executable, "-m", "firmware_sim.cli", "demo", *args,
                                 "--json"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        run = DemoRun(proc, lines)
        runs.append(run)
        return run

    yield start
    for run in runs:  # a failed assertion must not leave a demo running
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def assert_nothing_survives(summary: dict[str, Any]) -> None:
    procs = summary["processes"]
    pids = [procs["broker"], procs["gateway"], procs["chain"], *procs["agents"]]
    assert len(pids) == 3 + summary["devices"] + ROOM_DEVICES
    assert [p for p in pids if pid_alive(p)] == []
    for port in summary["ports"].values():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not Path(summary["workdir"]).exists()


def test_demo_proves_a_sealed_reading_and_leaves_nothing_running(start_demo: Any) -> None:
    code, summary = start_demo("--devices", "2", "--duration", "15").finish()
    assert code == 0, summary["error"]
    assert summary["ok"]
    assert summary["verified"]
    assert summary["decrypted"]
    assert summary["devices"] == 2
    assert summary["receipted"] > 0
    # Every committed record reached the log exactly once, nothing is left or rejected; the
    # contract story's three documents (request, consent, revocation) are leaves too, and
    # the quality site's records (its attestations are logged after this count).
    quality = summary["quality"]
    assert summary["log_size"] == summary["committed"] + 3 + quality["committed"]
    assert summary["committed"] == summary["receipted"]
    assert summary["outbox_depth"] == 0
    assert summary["dead_letters"] == 0
    assert summary["rejections"] == 0
    assert summary["duplicates"] == 0
    assert summary["checkpoint_size"] == summary["log_size"]
    verification = summary["verification"]
    assert verification["record"]["stream"] == "climate"
    checks = {c["check"] for c in verification["offline_checks"]}
    assert {"record signature", "checkpoint signature", "inclusion proof"} <= checks
    assert verification["decrypted"]["status"] == "decrypted"
    assert verification["decrypted"]["values"]
    assert verification["not_granted"]["status"] == "not_granted"
    assert verification["not_granted"]["values"] == []
    assert_contract_story_held(summary["contract"])
    # The miscalibrated sensor of the room is caught by the owner's hub, its neighbours not.
    assert quality["caught"]
    assert quality["states"]["room-003"] == "faulty"
    assert {quality["states"][n] for n in ("room-001", "room-002")} <= {"healthy", "suspect"}
    assert quality["reasons"]["room-003"] == ["bias"]
    assert quality["refused"] == {}
    # The owner's wallet holds exactly the credit its devices settled, as tokens.
    payout = summary["payout"]
    assert payout["ok"], payout["error"]
    assert payout["settled_micro"] > 0
    assert int(payout["balance"]) == int(payout["claimed"]) == payout["settled_micro"] * 10**12
    assert_nothing_survives(summary)


def assert_contract_story_held(contract: dict[str, Any]) -> None:
    """The company read temperature, never humidity, at its rate, and nothing once revoked."""
    assert contract["ok"], contract["error"]
    assert contract["temperature"]
    assert all(t.endswith(" Cel") for t in contract["temperature"])
    assert contract["humidity_opened"] == 0
    assert contract["humidity_closed"] > 0
    assert contract["granted_readings"] < contract["readings_while_granted"]
    assert contract["opened_after_revocation"] == 0
    assert contract["closed_after_revocation"] > 0
    assert contract["epochs_naming_consent"]
    assert contract["epoch_without_consent"] > max(contract["epochs_naming_consent"])
    # The audit, verified from the logged leaves under the owner key, says the same.
    assert "could decrypt Cel" in contract["audit"]
    assert "until revocation" in contract["audit"]


def test_ctrl_c_mid_run_ends_early_still_verifies_and_stops_everything(
        start_demo: Any) -> None:
    run = start_demo("--devices", "1", "--duration", "120")
    run.wait_for_line("running 1 devices", STORY_TIMEOUT_S)
    # A condition, not a fixed time: readings receipted and covered by a checkpoint.
    run.wait_for(receipted_and_checkpointed, "receipted, checkpointed records")
    run.process.send_signal(signal.SIGINT)
    code, summary = run.finish()
    assert code == 0, summary["error"]
    assert summary["ended_early"]
    assert summary["duration_s"] < 120
    assert summary["verified"]
    assert summary["receipted"] > 0
    assert_nothing_survives(summary)


def test_keep_runs_past_its_duration_until_ctrl_c_with_the_dashboard_live(
        start_demo: Any) -> None:
    run = start_demo("--devices", "1", "--duration", "1", "--keep")
    urls: list[str] = []

    def dashboard_line(line: str) -> bool:
        found = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/dashboard)", line)
        if found:
            urls.append(found[1])
        return found is not None
    run.wait_for(dashboard_line, "the dashboard URL")
    run.wait_for_line("running 1 devices until Ctrl-C")
    # Past --duration (1 s) and still running: a progress line from at least 5 s in.
    run.wait_for(lambda line: (m := re.match(r"\[\s*(\d+)s\]", line)) is not None
                 and int(m[1]) >= 5 and receipted_and_checkpointed(line),
                 "a progress line past the duration")
    page = httpx.get(urls[0], timeout=10)
    summary_now = httpx.get(urls[0].replace("/dashboard", "/v1/dashboard/summary"),
                            timeout=10).json()
    run.process.send_signal(signal.SIGINT)
    code, summary = run.finish()
    try:
        assert page.status_code == 200
        assert summary_now["log_size"] > 0
        assert code == 0, summary["error"]
        assert summary["ended_early"]
        assert summary["verified"]
        assert summary["dashboard"] == urls[0]
        assert Path(summary["workdir"]).is_dir()  # --keep keeps the files
    finally:
        shutil.rmtree(summary["workdir"], ignore_errors=True)


def test_sigterm_during_the_run_stops_everything_and_exits_143(start_demo: Any) -> None:
    run = start_demo("--devices", "1", "--duration", "120")
    run.wait_for_line("running 1 devices", STORY_TIMEOUT_S)
    time.sleep(1)
    run.process.send_signal(signal.SIGTERM)
    code, summary = run.finish()
    assert code == 128 + signal.SIGTERM
    assert not summary["ok"]
    assert "interrupted" in summary["error"]
    assert_nothing_survives(summary)


def test_demo_world_switches_the_tv_on_after_the_lead_time() -> None:
    # At any real time of day the demo's household is just before its first TV session,
    # so credit accrues within a one-minute demo.
    for seed, now in ((1, 1_700_000_000.0), (7, 1_700_040_000.0)):
        tv = TvSchedule(seed)
        world = now + world_offset_s(tv, now, 4.0)
        assert not tv.is_on(world + 3.9)
        assert tv.is_on(world + 4.0)
        assert tv.is_on(world + 60.0)
