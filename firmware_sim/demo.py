"""``edgeproof-sim demo``: the whole story in one command, on one machine.

1. A private installation in a temporary directory (:class:`firmware_sim.stack.Stack`):
   the fleet made by ``edgeproof-provision init``, the real Mosquitto on a free loopback
   port with the locked-down config ``broker-config`` wrote, the real gateway as its own
   process; a data recipient ``acme``; N devices from ``device add --count N --recipient acme
   --owner-key ...`` (HTTP registration, one broker credential each): the operator names
   acme in the devices' configs, but a device with an owner seals only to its owner and
   to what the owner consents to, so acme reads nothing.
2. Every device runs as its own agent process from its bundle, over simulated hardware
   (:mod:`firmware_sim.demo_agent`), for ``--duration`` seconds, while a live table shows
   per device readings, committed, receipted, outbox depth, credit accrued and settled, and
   the gateway's log size, checkpoints and rejections (:mod:`firmware_sim.view`).
   Every device pins one owner's keys (``device add --owner-key``); first the contract
   story runs on the first device (:mod:`firmware_sim.demo_contract`): a company requests
   temperature only at one reading a minute, the owner consents, the company reads the
   temperature and not the humidity, the owner revokes, later readings stay closed to it.
   Then biolab offers a paid request for the other devices but the last (and the quality
   room), funds the distributor for it, and the owner consents (:mod:`firmware_sim.demo_payout`).
   The quality room (:mod:`firmware_sim.demo_quality`, unless ``--no-quality``) runs beside
   them, judged by the owner's hub while it runs, until the miscalibrated sensor is FAULTY
   on the log and has logged usage after the verdict.
3. The agents stop (SIGTERM: a final flush), the gateway checkpoints everything, and one
   sealed reading is proved offline and opened by its recipient
   (:mod:`firmware_sim.demo_verify`).
4. The owner binds a wallet; the gateway posts a consent-gated epoch; the demo prints per
   device what was paid, withheld (``quality_faulty``) and locked, checks the epoch with
   ``edgeproof-verify payout``, and the owner claims (:mod:`firmware_sim.demo_payout`).
5. Everything started is stopped, the directory removed (unless ``--keep``), a summary
   printed (``--json``: one object).

The gateway's dashboard (``/dashboard``, docs/GATEWAY.md) is live while the devices run;
its URL is printed at the start. With ``--keep`` the devices run until Ctrl-C rather than
for ``--duration`` (then the demo verifies and stops as usual, and keeps the directory).

Signals: a first Ctrl-C while the devices run ends the run early and still verifies and
summarises; a Ctrl-C at any other moment, a second one, or SIGTERM stops everything at
once (exit 130 or 143). Every path goes through the same cleanup.
"""

from __future__ import annotations

import math
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.clock import SystemClock
from firmware_sim.demo_contract import COMPANY, ContractStory, StoryResult
from firmware_sim.demo_devices import FINAL_FLUSH_S, DemoDevice, write_demo_config
from firmware_sim.demo_home import HomeBroker
from firmware_sim.demo_payout import PayoutResult, PayoutStory
from firmware_sim.demo_quality import VALIDATOR, QualityResult, QualityStory
from firmware_sim.demo_verify import Verification, verify
from firmware_sim.procs import stop_all
from firmware_sim.stack import Interrupted, Stack, StackError
from firmware_sim.view import GatewayRow, Snapshot, View
from osutil.signals import SignalRelay
from protocol.errors import EdgeproofError
from protocol.keys import OwnerKey, OwnerPublic, save_recipient_key

RECIPIENT = "acme"  # named by the operator in the devices' configs; granted nothing
OWNER_SEALING_KEY = "owner-sealing.key"
POLL_S = 0.5
SETTLE_TIMEOUT_S = 15.0
ROOM_TIMEOUT_S = 300.0  # a bound for a slow, loaded machine; the wait ends on the condition


@dataclass(frozen=True)
class DemoOptions:
    devices: int = 5
    duration_s: float = 60.0
    seed: int = 1
    keep: bool = False
    local_broker: bool = False  # the owner's home broker too (firmware_sim/demo_home.py)
    quality: bool = True  # the room of three sensors, one miscalibrated (--no-quality: none)
    contract: bool = True  # the contract story and the paid request (--no-contract: none)


class Signals:
    """SIGINT and SIGTERM turned into two flags the demo checks between steps, and a wake-up
    for its waits. Set on a helper thread (osutil.signals): the main thread spends its time
    in ``wake.wait()``, and a handler that set the Event there could find its lock held by
    the very thread it interrupted."""

    def __init__(self) -> None:
        self.finish_early = False
        self.abort_signal: int | None = None
        self.running = False  # the devices' run is in progress: a first Ctrl-C ends it
        self.wake = threading.Event()
        self._relay = SignalRelay((signal.SIGINT, signal.SIGTERM), self._on_signal,
                                  "demo-signals")

    def install(self) -> None:
        self._relay.install()

    def restore(self) -> None:
        self._relay.restore()

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGINT and self.running and not self.finish_early:
            self.finish_early = True
        elif self.abort_signal is None:
            self.abort_signal = signum
        self.wake.set()

    @property
    def aborted(self) -> bool:
        return self.abort_signal is not None

    def check(self) -> None:
        """Raise Interrupted if the demo must stop now."""
        if self.aborted:
            raise Interrupted("interrupted")


class Demo:
    """One run of the demo; :meth:`run` returns the summary (also after a failure)."""

    def __init__(self, options: DemoOptions, view: View, signals: Signals,
                 workdir: Path | None = None) -> None:
        self.options = options
        self.view = view
        self.signals = signals
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="edgeproof-demo-"))
        self.stack = Stack(self.workdir, should_stop=lambda: signals.aborted)
        self.devices: list[DemoDevice] = []
        self.snapshot = Snapshot(0.0, options.duration_s, (), GatewayRow())
        self.verification = Verification()
        self.owner = OwnerKey.generate()  # made here for the demo; on the owner's machine in life
        self.contract = StoryResult()
        self.payout_story = PayoutStory(self.workdir, view.note, signals.check)
        self.payout = PayoutResult()
        self.quality_story = QualityStory(self.workdir, view.note)
        self.room: list[DemoDevice] = []  # the quality site's devices (not in the table)
        self.quality = QualityResult()
        self.home = HomeBroker(self.workdir) if options.local_broker else None
        self.elapsed_s = 0.0
        self.error = ""

    # --- the story ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run every step and clean up; return the summary. Raises Interrupted on abort."""
        try:
            self._setup()
            self._contract()
            self._run_devices()
            self._wait_for_room()
            self._stop_devices()
            for line in self.home.notes() if self.home is not None else []:
                self.view.note(line)
            self._settle()
            if self.signals.finish_early and self.room:
                self.view.note("quality: the run ended early; the room is not judged")
            elif self.room:
                self.quality = self.quality_story.judge(self.stack, self.room)
            self.view.note("proving one reading offline and opening it as its owner, and as "
                           f"'{RECIPIENT}' whom only the operator named ...")
            owner_key = self.workdir / OWNER_SEALING_KEY
            save_recipient_key(owner_key, self.owner.sealing, overwrite=True)
            self.verification = verify(
                self.stack, [d.device for d in self.devices],
                covered=self.snapshot.gateway.checkpoint_size, workdir=self.workdir,
                recipient_key=owner_key, outsider_key=self._key(RECIPIENT))
            self.error = self.error or self.verification.error
            if self.options.contract:
                everyone = [*self.devices, *self.room]
                self.payout = self.payout_story.claim(
                    self.stack, self.owner, {d.device.device_id: d.name for d in everyone},
                    {d.name: d.row().settled_micro for d in everyone})
                self.error = self.error or self.payout.error
        except Interrupted:
            raise
        except (EdgeproofError, OSError) as exc:  # a step failed: say which, clean up
            self.error = str(exc)
        finally:
            self._cleanup()
        self.signals.check()
        return self.summary()

    @property
    def dashboard_url(self) -> str:
        """The gateway's read-only dashboard (live while the demo runs)."""
        return f"{self.stack.gateway_url}/dashboard"

    def _key(self, recipient: str) -> Path:
        return self.stack.fleet_dir / "recipients" / f"{recipient}.key"

    def _setup(self) -> None:
        n = self.options.devices
        self.view.note(f"edgeproof demo: a private broker, gateway and {n} simulated "
                       f"devices in {self.workdir}")
        trusted = (self.quality_story.validator_id,) if self.options.quality else ()
        self.stack.extra_gateway_config = self.payout_story.prepare(trusted)
        self.stack.start()
        self.view.note(f"broker {self.stack.broker_url} (anonymous off, password file, ACL), "
                       f"gateway {self.stack.gateway_url}")
        self.view.note(f"dashboard: {self.dashboard_url}")
        if self.home is not None:
            self.home.start()
            self.view.note(f"the owner's home broker (Home Assistant's): {self.home.url}")
        self.stack.add_recipient(RECIPIENT)
        made = self.stack.add_devices("dev", n, [RECIPIENT],
                                      owner_key=OwnerPublic.of(self.owner).text())
        self.view.note(f"provisioned {n} devices over the gateway's API with their owner's "
                       f"key pinned: values sealed to the owner only ('{RECIPIENT}', named by "
                       f"the operator, is ignored); starting their agents")
        for index, device in enumerate(made):
            write_demo_config(device)
            if self.home is not None:
                self.home.configure(device.config, device.name, self.stack.gateway_url)
            self.devices.append(DemoDevice(device, index))
        unsynced = not SystemClock().wall_synced()
        if unsynced:
            self.view.note("this machine's clock is not NTP-synchronised: the devices are "
                           "told to trust it (--unsafe-assume-clock-synced), or they would "
                           "seal nothing to a grant")
        if self.options.quality:
            self.room = self.quality_story.prepare(self.stack, self.owner, n,
                                                   self.options.seed)
        self.view.note("payout: the gateway pays only credit earned under an owner's consent "
                       "to a company that funded it (consent gating, the default)" + (
                           f", and withholds credit of sensors that validator '{VALIDATOR}' "
                           "judges faulty ([payout] quality_validators; the demo trusts the "
                           "owner's hub, in life the operator names an independent validator)"
                           if self.room else ""))
        for d in [*self.devices, *self.room]:
            self.signals.check()
            d.start(self.workdir / "logs", self.options.seed, assume_clock_synced=unsynced)
        if self.room:
            self.quality_story.watch(self.stack)

    def _contract(self) -> None:
        """The contract story, then the company's funding and paid request."""
        if not self.options.contract:
            self.view.note("contract: left out (--no-contract): no company asks and the owner "
                           "consents to nothing, so nothing is paid")
            return
        story = ContractStory(self.stack, self.devices[0].device, self.owner,
                              self.view.note, self.signals.check)
        self.contract = story.run()
        self.error = self.contract.error
        if self.contract.request_id:
            self.payout_story.fund(COMPANY, bytes.fromhex(self.contract.request_id))
            self._reward(story)

    def _reward(self, story: ContractStory) -> None:
        """The company's paid request: every device but the story's (its consent is revoked)
        and, to show a locked one, the last of the others."""
        others = self.devices[1:]
        left_out = others[-1:] if len(others) >= 2 or (others and self.room) else []
        paid = [*(d for d in others if d not in left_out), *self.room]
        if not paid or story.company is None or story.signing is None:
            return
        self.payout_story.reward(self.stack, COMPANY, story.company.public_key, story.signing,
                                 owner=self.owner,
                                 devices={d.name: d.device.device_id for d in paid},
                                 left_out=[d.name for d in left_out])

    def _wait_for_room(self) -> None:
        """Let the room's agents run until the hub judged the miscalibrated sensor faulty
        and that sensor logged usage after the verdict (credit withheld), if not yet."""
        if not self.room or self.signals.finish_early or self._room_done():
            return
        self.view.note("quality: the room's sensors run on until the hub's verdict is logged "
                       "and the miscalibrated sensor's credit is withheld")
        deadline = time.monotonic() + ROOM_TIMEOUT_S
        self.signals.running = True  # a first Ctrl-C ends the wait (and skips the verdict)
        try:
            while not (self.signals.aborted or self.signals.finish_early or self._room_done()):
                self._check_alive()
                if time.monotonic() > deadline:
                    self.view.note(f"quality: no verdict within {ROOM_TIMEOUT_S:.0f} s")
                    break
                self.signals.wake.wait(POLL_S)
        finally:
            self.signals.running = False
        self.signals.check()

    def _room_done(self) -> bool:
        if self.quality_story.watch_error:
            raise StackError(f"the hub: {self.quality_story.watch_error}")
        return self.quality_story.withholding(self.stack)

    def _run_devices(self) -> None:
        self.signals.check()
        duration = self._duration_s
        self.view.note(f"running {len(self.devices)} devices "
                       + ("until Ctrl-C" if self.options.keep else f"for {duration:.0f} s"))
        start = time.monotonic()
        self.signals.running = True
        self.view.start()
        try:
            while not (self.signals.finish_early or self.signals.aborted):
                self.elapsed_s = time.monotonic() - start
                self.snapshot = self._snapshot()
                self.view.update(self.snapshot)
                self._check_alive()
                if self.elapsed_s >= duration:
                    break
                self.signals.wake.wait(min(POLL_S, duration - self.elapsed_s))
        finally:
            self.signals.running = False
            self.view.stop()
        self.signals.check()
        if self.signals.finish_early:
            self.view.note(f"Ctrl-C: ending the run early after {self.elapsed_s:.0f} s")

    @property
    def _duration_s(self) -> float:
        return math.inf if self.options.keep else self.options.duration_s

    def _snapshot(self) -> Snapshot:
        return Snapshot(self.elapsed_s, self._duration_s,
                        tuple(d.row() for d in self.devices), self._gateway_row())

    def _gateway_row(self) -> GatewayRow:
        try:
            stats = self.stack.stats()
        except StackError:
            if self.stack.gateway.running:
                return self.snapshot.gateway  # a slow answer; the next poll will do
            raise
        return GatewayRow(log_size=int(stats["log_size"]),
                          checkpoints=int(stats["checkpoints"]),
                          checkpoint_size=int(stats.get("checkpoint_size") or 0),
                          rejections=sum(int(v) for v in stats["rejections"].values()),
                          duplicates=int(stats["records_duplicate"]))

    def _check_alive(self) -> None:
        for d in [*self.devices, *self.room]:
            if d.child is not None and not d.child.alive():
                raise StackError(f"device {d.name} stopped (exit {d.child.process.returncode}):"
                                 f" {d.child.log_tail(1)}")
        if self.stack.gateway.starts and not self.stack.gateway.running:
            raise StackError(f"the gateway stopped: {self.stack.gateway.log_tail(1)}")

    def _stop_devices(self) -> None:
        self.view.note("stopping the devices (each flushes its outbox for up to "
                       f"{FINAL_FLUSH_S} s)")
        children = [d.child for d in [*self.devices, *self.room] if d.child is not None]
        codes = stop_all(children, timeout_s=FINAL_FLUSH_S + 10)
        for d in self.devices:
            d.exit_code = codes.get(d.name)
        self.snapshot = self._snapshot()

    def _settle(self) -> None:
        """Wait until a checkpoint covers the whole log (the gateway signs one every 2 s)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        gateway = self._gateway_row()
        while gateway.checkpoint_size < gateway.log_size and time.monotonic() < deadline:
            self.signals.check()
            self.signals.wake.wait(0.2)
            gateway = self._gateway_row()
        self.snapshot = Snapshot(self.elapsed_s, self._duration_s,
                                 self.snapshot.devices, gateway)

    def _cleanup(self) -> None:
        self.view.stop()
        self.quality_story.stop_watching()
        children = [d.child for d in [*self.devices, *self.room]
                    if d.child is not None and d.child.alive()]
        if children:
            stop_all(children, timeout_s=FINAL_FLUSH_S + 5)
        try:
            try:
                self.stack.close()
            finally:
                self.payout_story.close()
                if self.home is not None:
                    self.home.close()
        finally:
            if not self.options.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)

    # --- the result ----------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The run as one JSON-ready object (what ``--json`` prints)."""
        s, g = self.snapshot, self.snapshot.gateway
        v = self.verification
        return {
            "ok": (not self.error and v.verified
                   and ((self.contract.ok and self.payout.ok) or not self.options.contract)
                   and (self.quality.caught or self.signals.finish_early
                        or not self.options.quality)),
            "error": self.error or None,
            "devices": len(self.devices),
            "room_devices": len(self.room),
            "duration_s": round(self.elapsed_s, 1),
            "ended_early": self.signals.finish_early,
            "readings": s.total("readings"), "committed": s.total("committed"),
            "receipted": s.total("receipted"), "outbox_depth": s.total("outbox"),
            "dead_letters": s.total("dead_letters"),
            "credit_accrued_micro": s.total("accrued_micro"),
            "credit_settled_micro": s.total("settled_micro"),
            "log_size": g.log_size, "checkpoints": g.checkpoints,
            "checkpoint_size": g.checkpoint_size, "duplicates": g.duplicates,
            "rejections": g.rejections,
            "verified": v.verified, "decrypted": v.decrypted.get("status") == "decrypted",
            "verification": v.as_json(),
            "contract": self.contract.as_json(),
            "payout": self.payout.as_json(),
            "quality": self.quality.as_json(),
            "per_device": [{**vars(row), "exit_code": d.exit_code}
                           for d, row in zip(self.devices, s.devices, strict=False)],
            "processes": {**self.stack.pids(), "chain": self.payout_story.pid,
                          "agents": [d.child.pid for d in [*self.devices, *self.room]
                                     if d.child]},
            "ports": {"broker": self.stack.broker_port, "gateway": self.stack.gateway_port,
                      "chain": self.payout_story.port},
            "dashboard": self.dashboard_url,
            "home_broker": None if self.home is None else {
                "url": self.home.url, "discovered": self.home.discovered()},
            "workdir": str(self.workdir), "kept": self.options.keep,
            "commands": v.commands if self.options.keep else [],
        }
