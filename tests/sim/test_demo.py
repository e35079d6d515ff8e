"""``edgeproof-sim demo`` as a user runs it: a real broker, gateway, chain node and agents
come up, a sealed reading is proved offline and opened by its recipient only, the owner is
paid only what its consented devices earned (the faulty sensor's credit withheld, a device
without consent locked), and nothing the demo started survives it, whether it ran to the
end, was cut short by Ctrl-C, or was terminated.

One whole run (``finished_demo``, module-scoped) serves every test that only reads its
outcome; the tests of Ctrl-C, SIGTERM and ``--keep`` need runs of their own, made as short
as their point allows: one device, no quality room, and (SIGTERM, ``--keep``) no contract
story either; the Ctrl-C run keeps the story so an early end still pays and claims."""

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
from firmware_sim.demo_quality import TV_LEAD_S, TV_SPAN_S, shared_evening_offset
from firmware_sim.hardware import TvSchedule
from firmware_sim.procs import pid_alive

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 300  # a bound for a slow, loaded machine; finish() returns at exit
STORY_TIMEOUT_S = 180  # set-up and the contract story, before the devices' run begins


@dataclass
class DemoRun:
    process: subprocess.Popen[str]
    lines: queue.Queue[str]  # stderr lines not yet looked at
    pump: threading.Thread
    printed: list[str]  # every stderr line (what a user reads)
    out_pump: threading.Thread
    out: list[str]  # stdout: the --json summary, read as it comes so the pipe never fills

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
        try:
            self.process.wait(timeout=DEMO_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the demo did not exit within {DEMO_TIMEOUT_S} s; its last "
                                 f"lines: {''.join(self.printed[-5:])}") from None
        self.pump.join(timeout=DEMO_TIMEOUT_S)
        self.out_pump.join(timeout=DEMO_TIMEOUT_S)
        return self.process.returncode, json.loads("".join(self.out))


def receipted_and_checkpointed(line: str) -> bool:
    """A progress line saying records were receipted and a checkpoint covers some."""
    found = re.search(r" (\d+) receipted,.*latest covers (\d+)\)", line)
    return found is not None and int(found[1]) > 0 and int(found[2]) > 0


def launch(*args: str) -> DemoRun:
    """Start ``edgeproof-sim demo ARGS --json``; its stderr (progress) is read line by line."""
    proc = subprocess.Popen([sys.executable, "-m", "firmware_sim.cli", "demo", *args,
                             "--json"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    lines: queue.Queue[str] = queue.Queue()
    printed: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
            printed.append(line)

    out: list[str] = []

    def out_pump() -> None:
        assert proc.stdout is not None
        out.extend(proc.stdout)

    threads = [threading.Thread(target=f, daemon=True) for f in (pump, out_pump)]
    for thread in threads:
        thread.start()
    return DemoRun(proc, lines, threads[0], printed, threads[1], out)


def stop(runs: list[DemoRun]) -> None:
    for run in runs:  # a failed assertion must not leave a demo running
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


@pytest.fixture
def start_demo() -> Iterator[Any]:
    runs: list[DemoRun] = []

    def start(*args: str) -> DemoRun:
        runs.append(launch(*args))
        return runs[-1]

    yield start
    stop(runs)


@dataclass(frozen=True)
class Finished:
    code: int
    summary: dict[str, Any]
    output: str  # what the demo printed for its user (stderr with --json)


@pytest.fixture(scope="module")
def finished_demo() -> Iterator[Finished]:
    """One whole run with the quality room, shared by the tests that read its outcome."""
    run = launch("--devices", "3", "--duration", "5")
    try:
        code, summary = run.finish()
        yield Finished(code, summary, "".join(run.printed))
    finally:
        stop([run])


def assert_nothing_survives(summary: dict[str, Any]) -> None:
    procs = summary["processes"]
    pids = [procs["broker"], procs["gateway"], procs["chain"], *procs["agents"]]
    assert len(pids) == 3 + summary["devices"] + summary["room_devices"]
    assert [p for p in pids if pid_alive(p)] == []
    for port in summary["ports"].values():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not Path(summary["workdir"]).exists()


def test_demo_proves_a_sealed_reading_and_leaves_nothing_running(
        finished_demo: Finished) -> None:
    code, summary = finished_demo.code, finished_demo.summary
    assert code == 0, summary["error"]
    assert summary["ok"]
    assert summary["verified"]
    assert summary["decrypted"]
    assert summary["devices"] == 3
    assert summary["room_devices"] == 3
    assert summary["receipted"] > 0
    verification = summary["verification"]
    assert verification["record"]["stream"] == "climate"
    checks = {c["check"] for c in verification["offline_checks"]}
    assert {"record signature", "checkpoint signature", "inclusion proof"} <= checks
    assert verification["decrypted"]["status"] == "decrypted"
    assert verification["decrypted"]["values"]
    assert verification["not_granted"]["status"] == "not_granted"
    assert verification["not_granted"]["values"] == []
    assert_nothing_survives(summary)


def test_demo_loses_rejects_and_duplicates_nothing(finished_demo: Finished) -> None:
    summary = finished_demo.summary
    # Every committed record reached the log exactly once, nothing is left or rejected.
    # Besides the records: the contract story's request, consent and revocation, the paid
    # request and its consent, and the hub's attestations logged while the room ran (the
    # ones logged after the devices stopped, and the wallet binding, come after this count).
    assert summary["committed"] == summary["receipted"]
    documents = summary["log_size"] - summary["committed"] - summary["quality"]["committed"]
    assert 5 <= documents <= 5 + summary["quality"]["attestations_logged"]
    assert summary["outbox_depth"] == 0
    assert summary["dead_letters"] == 0
    assert summary["rejections"] == 0
    assert summary["duplicates"] == 0
    assert summary["checkpoint_size"] == summary["log_size"]


def test_demo_company_reads_only_what_the_owner_consented_to(finished_demo: Finished) -> None:
    assert_contract_story_held(finished_demo.summary["contract"])


def test_demo_hub_catches_the_miscalibrated_sensor_and_not_its_neighbours(
        finished_demo: Finished) -> None:
    quality = finished_demo.summary["quality"]
    assert quality["caught"]
    assert quality["states"]["room-003"] == "faulty"
    assert {quality["states"][n] for n in ("room-001", "room-002")} <= {"healthy", "suspect"}
    assert quality["reasons"]["room-003"] == ["bias"]
    assert quality["refused"] == {}


def test_demo_pays_only_consented_credit_withholds_the_faulty_sensor_locks_the_rest(
        finished_demo: Finished) -> None:
    payout = finished_demo.summary["payout"]
    assert payout["ok"], payout["error"]
    assert payout["verified"]  # edgeproof-verify payout recomputed the epoch and agreed
    # ... with Funded events read from the deployment block the epoch states, proven on chain
    # (the gateway checked it at start too); not the old document read from block 0.
    assert isinstance(payout["distributor_block"], int)
    assert payout["distributor_block"] > 0
    devices = payout["devices"]
    assert payout["consented"] == ["dev-002", "room-001", "room-002", "room-003"]
    # The device no consent names earned credit that stays settled and locked.
    assert devices["dev-003"]["settled_micro"] > 0
    assert devices["dev-003"]["paid_micro"] == 0
    assert devices["dev-003"]["locked_micro"] == devices["dev-003"]["settled_micro"]
    # The healthy neighbours are paid and nothing of theirs is withheld; the miscalibrated
    # sensor's usage logged after the hub's verdict is withheld for quality.
    for healthy in ("room-001", "room-002", "dev-002"):
        assert devices[healthy]["paid_micro"] > 0
        assert devices[healthy]["withheld_micro"] == 0
    assert devices["room-003"]["withheld_micro"] > 0
    assert devices["room-003"]["withheld_reason"] == "quality_faulty"
    for account in devices.values():
        assert account["paid_micro"] + account["withheld_micro"] + account["locked_micro"] \
            == account["settled_micro"]
    assert payout["paid_micro"] == sum(a["paid_micro"] for a in devices.values())
    # The owner's wallet holds exactly the paid credit, as tokens.
    assert payout["paid_micro"] > 0
    assert int(payout["claimable"]) == payout["paid_micro"] * 10**12
    assert int(payout["balance"]) == int(payout["claimed"]) == payout["paid_micro"] * 10**12
    assert payout["settled_micro"] > payout["paid_micro"]
    # ... and the user is told so in words.
    printed = finished_demo.output
    assert "quality_faulty" in printed
    assert "no consent to a paying company" in printed
    assert "now holds" in printed


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
    run = start_demo("--devices", "1", "--duration", "120", "--no-quality")
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
    run = start_demo("--devices", "1", "--duration", "1", "--keep", "--no-quality",
                     "--no-contract")
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
    run = start_demo("--devices", "1", "--duration", "120", "--no-quality", "--no-contract")
    run.wait_for_line("running 1 devices", STORY_TIMEOUT_S)
    run.wait_for(lambda line: re.match(r"\[\s*\d+s\]", line) is not None,
                 "a progress line of the run")
    run.process.send_signal(signal.SIGTERM)
    code, summary = run.finish()
    assert code == 128 + signal.SIGTERM
    assert not summary["ok"]
    assert "interrupted" in summary["error"]
    assert_nothing_survives(summary)


def test_demo_world_switches_the_tv_on_after_the_lead_time() -> None:
    # At any real time of day the demo's household is just before its first TV session,
    # so credit accrues within a one-minute demo: every half hour of two days, the seeds
    # of make demo's five devices.
    for seed in range(1, 6):
        tv = TvSchedule(seed)
        for step in range(96):
            now = 1_700_000_000.0 + step * 1800
            world = now + world_offset_s(tv, now, 4.0)
            assert not tv.is_on(world + 3.9), (seed, now)
            assert tv.on_seconds(world + 4.0, world + 64.0) == 60.0, (seed, now)


@pytest.mark.parametrize("devices", [3, 5])  # the tests' demo and make demo's
def test_the_quality_room_shares_an_evening_whatever_the_hour_the_demo_starts(
        devices: int) -> None:
    """The room's three TVs must all be on from TV_LEAD_S into the run (their power lines
    make the hub's windows): at every half hour of two days the offset the demo picks puts
    them there. The world runs ahead of real time at some hours and behind it at others
    (test_sensor_faults holds the room's faults to the world's own start either way)."""
    seeds = [1 + devices + i for i in range(3)]  # the room's seeds (QualityStory.prepare)
    signs = set()
    for step in range(96):
        now = 1_700_000_000.0 + step * 1800
        start = now + shared_evening_offset(seeds, now)
        for seed in seeds:
            tv = TvSchedule(seed)
            on = tv.on_seconds(start + TV_LEAD_S, start + TV_LEAD_S + TV_SPAN_S)
            assert on == TV_SPAN_S, f"seed {seed} at {now}: TV on {on} of {TV_SPAN_S} s"
        signs.add(start > now)
    assert signs == {True, False}
