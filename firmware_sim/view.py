"""What the demo shows while it runs: a live table on a terminal, plain lines elsewhere.

:class:`LiveView` redraws a rich table about twice a second: per device the readings
taken, records committed to the outbox, records receipted by the gateway, the outbox depth,
dead letters, credit accrued and settled, and the uplink state; for the gateway the log
size, checkpoints and rejections. :class:`PlainView` prints one summary line every few
seconds instead (a pipe, a CI log, ``--json``). Both take :class:`Snapshot` values, which
the demo builds from ``edgeproof-agent status`` data and the gateway's ``/v1/stats``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from rich import box
from rich.console import Console, Group, JustifyMethod
from rich.live import Live
from rich.table import Table
from rich.text import Text

REFRESH_PER_SECOND = 2
PLAIN_EVERY_S = 5.0
# When the output is a file or a pipe there is no terminal width to respect: rich would
# assume 80 columns and fold the final table and the long lines. None of ours is this wide.
PIPE_WIDTH = 400


def demo_console(stream: TextIO | None = None) -> Console:
    """The console the demo prints on: the terminal's own on a terminal; otherwise one that
    never wraps (a fixed wide width, no soft wrapping), so a log file reads like the screen."""
    console = Console(file=stream)
    if console.is_terminal:
        return console
    return Console(file=stream, width=PIPE_WIDTH, soft_wrap=True)


@dataclass(frozen=True)
class DeviceRow:
    """One device as its agent reports it."""

    name: str
    readings: int = 0
    committed: int = 0
    receipted: int = 0
    outbox: int = 0
    dead_letters: int = 0
    accrued_micro: int = 0
    settled_micro: int = 0
    uplink: str = "starting"


@dataclass(frozen=True)
class GatewayRow:
    """The gateway's counters."""

    log_size: int = 0
    checkpoints: int = 0
    checkpoint_size: int = 0
    rejections: int = 0
    duplicates: int = 0


@dataclass(frozen=True)
class Snapshot:
    """Everything the view shows at one moment."""

    elapsed_s: float
    duration_s: float
    devices: tuple[DeviceRow, ...]
    gateway: GatewayRow

    def total(self, name: str) -> int:
        """The sum of one integer field over the devices."""
        return sum(int(getattr(d, name)) for d in self.devices)


class View(Protocol):
    def note(self, text: str) -> None: ...
    def start(self) -> None: ...
    def update(self, snapshot: Snapshot) -> None: ...
    def stop(self) -> None: ...


def credits(micro: int) -> str:
    """Micro-credits as credits with six decimals (integers only, never floats)."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"


def device_table(snapshot: Snapshot, title: str | None = None) -> Table:
    """The per-device table, with a totals row."""
    table = Table(title=title, title_justify="left", show_footer=True, expand=False,
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    totals = {name: str(snapshot.total(name)) for name in
              ("readings", "committed", "receipted", "outbox", "dead_letters")}
    columns: list[tuple[str, str, JustifyMethod]] = [
               ("device", "total", "left"), ("readings", totals["readings"], "right"),
               ("committed", totals["committed"], "right"),
               ("receipted", totals["receipted"], "right"),
               ("outbox", totals["outbox"], "right"),
               ("dead", totals["dead_letters"], "right"),
               ("credit\naccrued", credits(snapshot.total("accrued_micro")), "right"),
               ("credit\nsettled", credits(snapshot.total("settled_micro")), "right"),
               ("uplink", "", "left")]
    for header, footer, justify in columns:
        widest = max(len(line) for line in header.splitlines())
        if header == "uplink":  # a failure's text is long; the status command shows it all
            table.add_column(header, no_wrap=True, overflow="ellipsis", max_width=14)
        else:
            table.add_column(header, footer=footer, justify=justify,
                             no_wrap=True, min_width=max(widest, len(footer)))
    for d in snapshot.devices:
        uplink = Text(d.uplink, style="red" if d.uplink.startswith("FAILED") else "")
        table.add_row(d.name, str(d.readings), str(d.committed), str(d.receipted),
                      str(d.outbox), str(d.dead_letters), credits(d.accrued_micro),
                      credits(d.settled_micro), uplink)
    return table


def gateway_line(g: GatewayRow) -> str:
    """The gateway's counters in one line."""
    return (f"gateway: log {g.log_size} leaves, {g.checkpoints} checkpoints "
            f"(latest covers {g.checkpoint_size}), {g.duplicates} duplicates, "
            f"{g.rejections} rejections")


def plain_line(s: Snapshot) -> str:
    """One summary line for logs."""
    return (f"[{s.elapsed_s:4.0f}s] {len(s.devices)} devices: {s.total('readings')} readings, "
            f"{s.total('committed')} committed, {s.total('receipted')} receipted, outbox "
            f"{s.total('outbox')}, credit {credits(s.total('accrued_micro'))} accrued / "
            f"{credits(s.total('settled_micro'))} settled | {gateway_line(s.gateway)}")


class LiveView:
    """A rich Live table on the terminal, refreshed about twice a second."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._live: Live | None = None

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def _render(self, s: Snapshot | None) -> Group:
        if s is None:
            return Group(Text("waiting for the first status ..."))
        left = max(0.0, s.duration_s - s.elapsed_s)
        until = ("running until Ctrl-C" if left == math.inf
                 else f"{left:.0f} s left (Ctrl-C ends early)")
        head = Text(f"edgeproof demo: {len(s.devices)} simulated devices, "
                    f"{s.elapsed_s:.0f} s elapsed, {until}", style="bold")
        return Group(head, device_table(s), Text(gateway_line(s.gateway)))

    def start(self) -> None:
        self._live = Live(self._render(None), console=self.console,
                          refresh_per_second=REFRESH_PER_SECOND, transient=False)
        self._live.start()

    def update(self, snapshot: Snapshot) -> None:
        if self._live is not None:
            self._live.update(self._render(snapshot))

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class PlainView:
    """Plain lines on a stream: notes as they come, a summary line every few seconds."""

    def __init__(self, stream: TextIO | None = None, every_s: float = PLAIN_EVERY_S) -> None:
        self.stream = stream or sys.stdout
        self.every_s = every_s
        self._next_s = 0.0
        self._last: Snapshot | None = None

    def note(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self) -> None:
        self._next_s = 0.0

    def update(self, snapshot: Snapshot) -> None:
        self._last = snapshot
        if snapshot.elapsed_s >= self._next_s:
            self._next_s = snapshot.elapsed_s + self.every_s
            self.note(plain_line(snapshot))
            self._last = None  # printed

    def stop(self) -> None:
        if self._last is not None:  # the final figures of the run, if not printed yet
            self.note(plain_line(self._last))
            self._last = None


def print_report(console: Console, summary: dict[str, Any], snapshot: Snapshot) -> None:
    """Print the end of the demo for people: the final table, the proof, the summary."""
    console.print(device_table(snapshot, title="final figures (after the devices stopped)"))
    console.print(gateway_line(snapshot.gateway), markup=False, highlight=False)
    v = summary["verification"]
    record = v.get("record")
    if record:
        console.print(f"\nrecord: leaf {record['leaf_index']} of the log = device "
                      f"{record['device']} ({record['device_id']}), seq {record['seq']}, "
                      f"stream '{record['stream']}'", markup=False, highlight=False)
    for title, checks in (("checked against the gateway's API", v["online_checks"]),
                          ("checked again offline, from the saved proof bundle",
                           v["offline_checks"])):
        if checks:
            console.print(f"{title}:", markup=False, highlight=False)
            for c in checks:
                console.print(f"  ok  {c['check']}: {c['detail']}", markup=False,
                              highlight=False)
    for opened in (v.get("decrypted"), v.get("not_granted")):
        if opened:
            shown = ", ".join(opened["values"]) or opened.get("detail") or ""
            console.print(f"recipient '{opened['recipient']}': {opened['status']}"
                          f"{': ' + shown if shown else ''}", markup=False, highlight=False)
    for command in summary.get("commands") or []:
        console.print(f"re-check it yourself: {command}", markup=False, highlight=False)
    payout = summary.get("payout") or {}
    if payout.get("wallet"):
        console.print(f"wallet {payout['wallet']}: claimed {int(payout['claimed']) / 10**18:.6f}"
                      f" tokens for {credits(payout.get('paid_micro', 0))} paid of "
                      f"{credits(payout['settled_micro'])} settled "
                      f"({credits(payout.get('withheld_micro', 0))} withheld: quality_faulty; "
                      f"{credits(payout.get('locked_micro', 0))} locked: no consent in force); "
                      f"token balance {int(payout['balance']) / 10**18:.6f} (distributor "
                      f"{payout['distributor']})", markup=False, highlight=False)
    verdict = "VERIFIED" if summary["verified"] else "NOT verified"
    console.print(
        f"\n{verdict}. {summary['devices']} devices in {summary['duration_s']:.0f} s: "
        f"{summary['readings']} readings, {summary['committed']} records committed, "
        f"{summary['receipted']} receipted; log {summary['log_size']} leaves, "
        f"{summary['checkpoints']} checkpoints, {summary['rejections']} rejections; credit "
        f"{credits(summary['credit_accrued_micro'])} accrued, "
        f"{credits(summary['credit_settled_micro'])} settled. Everything it started is "
        "stopped.", markup=False, highlight=False)
