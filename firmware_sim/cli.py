"""``edgeproof-sim``: the one-command demo and the fleet simulator.

    edgeproof-sim demo [--devices N] [--duration SECONDS] [--seed S] [--keep] [--local-broker]
                       [--no-quality] [--no-contract] [--json]
    edgeproof-sim fleet --fleet FLEET_DIR --devices N [--duration S] [--rate HZ] [--json]
    edgeproof-sim quality [--sites FILE] [--hours H] [--seed S] [--json]

Thin by design: parse arguments, run :mod:`firmware_sim.demo` or :mod:`firmware_sim.fleet`,
print the result, and turn a failure into one line on stderr and a non-zero exit code.
Both commands need the ``sim`` extra (``pip install 'edgeproof[sim]'``); they import it only
when they run, so ``--help`` works on a base install and a missing extra is one clear line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import signal
import sys
from pathlib import Path

from osutil.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_version, run_command
from protocol.errors import ConfigError, EdgeproofError

PROG = "edgeproof-sim"
FLEET_FILE = "fleet.toml"  # provisioning.fleet.FLEET_FILE, not imported: --help stays fast
OWN_PACKAGES = frozenset({"protocol", "osutil", "agent", "gateway", "provisioning", "verifier",
                          "firmware_sim"})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Simulated edgeproof devices: "
                                     "the one-command demo and a fleet simulator for load runs.",
                                     epilog="Exit status: 0 ok, 1 runtime failure, 2 usage or "
                                     "configuration error, 130 interrupted (docs/CLI.md).")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="run a private broker, gateway and simulated devices, then verify",
        description="Start a private Mosquitto (locked down: no anonymous access, one "
        "password and ACL per device) and gateway in a temporary directory, provision "
        "simulated devices through the real provisioning path, run them with a live view, "
        "prove one of their records offline with edgeproof-verify, and stop everything. "
        "Ctrl-C ends the run early (and still verifies); a second Ctrl-C stops at once.")
    demo.add_argument("--devices", type=int, default=5, metavar="N",
                      help="simulated devices (default 5)")
    demo.add_argument("--duration", type=float, default=60.0, metavar="SECONDS",
                      help="how long the devices run (default 60)")
    demo.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    demo.add_argument("--keep", action="store_true",
                      help="run the devices until Ctrl-C instead of --duration (the "
                      "dashboard stays live meanwhile), and keep the temporary directory "
                      "(fleet, logs, proof bundle)")
    demo.add_argument("--no-quality", action="store_true",
                      help="leave out the room of three sensors (one miscalibrated) whose "
                      "validator's verdicts withhold credit: a shorter run")
    demo.add_argument("--no-contract", action="store_true",
                      help="leave out the contract story and the company's paid request: the "
                      "owner consents to nothing, so nothing is paid (a shorter run)")
    demo.add_argument("--json", action="store_true",
                      help="print one JSON object at the end (progress goes to stderr)")
    demo.add_argument("--local-broker", action="store_true",
                      help="also run the owner's home broker and let the devices publish to "
                      "it with Home Assistant discovery; print what was discovered")
    demo.set_defaults(handler=_cmd_demo)

    fleet = sub.add_parser(
        "fleet", help="many simulated devices in one process against a real gateway",
        description="Run N lightweight simulated devices in this process against the gateway "
        "and broker of an existing fleet (fleet.toml from edgeproof-provision init). Each "
        "signs real records with its own key and publishes batches over its own MQTT "
        "connection with its own credential. Devices PREFIX-001.. are taken from the fleet's "
        "bundles, or provisioned (device add --count N) if the fleet has none. Prints "
        "throughput per interval and one JSON line at the end.")
    fleet.add_argument("--fleet", type=Path, metavar="FLEET_DIR",
                       help="the fleet directory made by edgeproof-provision init "
                       "(required; its fleet.toml is accepted too)")
    # The spelling before docs/CLI.md's one convention, kept as a hidden alias.
    fleet.add_argument("--config", dest="fleet", type=Path, help=argparse.SUPPRESS)
    fleet.add_argument("--devices", type=int, required=True, metavar="N")
    fleet.add_argument("--duration", type=float, default=60.0, metavar="S",
                       help="how long the devices produce records (default 60)")
    fleet.add_argument("--rate", type=float, default=1.0, metavar="HZ",
                       help="readings per second per device (default 1)")
    fleet.add_argument("--prefix", default="fleetsim",
                       help="device name prefix (default fleetsim)")
    fleet.add_argument("--batch-interval", type=float, default=1.0, metavar="S",
                       help="a device sends what it has this often (default 1)")
    fleet.add_argument("--interval", type=float, default=5.0, metavar="S",
                       help="print throughput this often (default 5)")
    fleet.add_argument("--json", action="store_true",
                       help="only the final JSON line on stdout (intervals go to stderr)")
    fleet.set_defaults(handler=_cmd_fleet)

    quality = sub.add_parser(
        "quality", help="co-located sensors with seeded faults through the validator",
        description="Simulate the sites of a sites file (seeded faults: bias, drift, stuck, "
        "noise, spikes, dropout, replay) at one reading a minute, judge every 10-minute "
        "window with the quality validator, and print each change of a sensor's state "
        "(docs/QUALITY.md). Offline: no broker or gateway.")
    quality.add_argument("--sites", type=Path, default=Path("examples/quality-sites.toml"),
                         metavar="FILE", help="sites file (default examples/quality-sites.toml)")
    quality.add_argument("--hours", type=float, default=72.0, metavar="H",
                         help="simulated hours (default 72)")
    quality.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    quality.add_argument("--json", action="store_true", help="one JSON object at the end")
    quality.set_defaults(handler=_cmd_quality)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit code."""
    return run_command("edgeproof-sim", lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] in OWN_PACKAGES:
            raise
        return _fail(f"{args.command} needs the 'sim' extra (no module named {exc.name!r}); "
                     "install it with: pip install 'edgeproof[sim]'")


# Upper bounds of the float options: past these a run is a typo, not a plan (and 1e308
# overflows the arithmetic behind them).
MAX_HOURS = 24.0 * 366  # quality --hours: a year of simulated readings
MAX_DURATION_S = 7 * 86400.0  # demo/fleet --duration: a week
MAX_RATE_HZ = 1000.0  # fleet --rate, readings per second per device
MAX_INTERVAL_S = 3600.0  # fleet --batch-interval and --interval
MIN_REPORT_INTERVAL_S = 0.1  # fleet --interval: more often floods the terminal


def check_float(flag: str, value: float, high: float, low: float = 0.0) -> float:
    """``value`` of option ``flag`` if it is finite, > ``low`` (>= when ``low`` > 0) and <=
    ``high``; else ConfigError naming the flag (exit 2). NaN and infinities never pass."""
    ok = math.isfinite(value) and (value >= low if low > 0 else value > 0) and value <= high
    if not ok:
        floor = f">= {low:g}" if low > 0 else "> 0"
        raise ConfigError(f"{flag} must be a number {floor} and <= {high:g}, got {value!r}")
    return value


def _cmd_quality(args: argparse.Namespace) -> int:
    check_float("--hours", args.hours, MAX_HOURS)
    from firmware_sim.quality_demo import changes  # noqa: PLC0415
    from firmware_sim.sites import load_sites  # noqa: PLC0415
    caught: dict[str, list[str]] = {}
    for site in load_sites(args.sites):
        for c in changes(site, args.hours, args.seed):
            if c.after == "faulty":
                caught.setdefault(f"{c.site}/{c.sensor}", []).append(
                    f"{c.start_s / 3600:.1f}h {','.join(c.reasons)}")
            if not args.json:
                print(f"{c.start_s / 3600:7.2f} h  {c.site}/{c.sensor}: {c.before} -> "
                      f"{c.after} {','.join(c.reasons)}".rstrip())
    if args.json:
        print(json.dumps({"hours": args.hours, "seed": args.seed, "faulty": caught}))
    else:
        print("turned faulty: " + ("; ".join(f"{k} at {', '.join(v)}"
                                             for k, v in sorted(caught.items())) or "none"))
    return EXIT_OK


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


# --- demo ------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.devices < 1:
        return _fail("--devices must be >= 1", EXIT_USAGE)
    check_float("--duration", args.duration, MAX_DURATION_S)
    # The sim extra, imported here so that --help and a missing extra need none of it.
    from firmware_sim.demo import Demo, DemoOptions, Signals  # noqa: PLC0415
    from firmware_sim.stack import Interrupted  # noqa: PLC0415
    from firmware_sim.view import (  # noqa: PLC0415
        LiveView,
        PlainView,
        View,
        demo_console,
        print_report,
    )

    importlib.import_module("gateway.service")  # the demo runs the gateway: fail before it
    console = demo_console()
    live = not args.json and console.is_terminal
    view: View = LiveView(console) if live else PlainView(sys.stderr if args.json
                                                          else sys.stdout)
    signals = Signals()
    signals.install()
    demo = Demo(DemoOptions(devices=args.devices, duration_s=args.duration, seed=args.seed,
                            keep=args.keep, local_broker=args.local_broker,
                            quality=not args.no_quality, contract=not args.no_contract),
                view, signals)
    code = EXIT_OK
    try:
        summary = demo.run()
    except Interrupted:
        summary = {**demo.summary(), "ok": False, "error": "interrupted; everything it "
                   "started is stopped"}
        code = 128 + (signals.abort_signal or signal.SIGINT)
    finally:
        signals.restore()
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    elif demo.snapshot.devices and code == EXIT_OK:
        print_report(console, summary, demo.snapshot)
    if code != EXIT_OK:
        return _fail(str(summary["error"]), code)
    if not summary["ok"]:
        return _fail(str(summary["error"] or "verification failed"))
    return EXIT_OK


# --- fleet -----------------------------------------------------------------------------------


def _cmd_fleet(args: argparse.Namespace) -> int:
    if args.fleet is None:
        return _fail("fleet: --fleet FLEET_DIR is required", EXIT_USAGE)
    if args.devices < 1:
        return _fail("--devices must be >= 1", EXIT_USAGE)
    check_float("--duration", args.duration, MAX_DURATION_S)
    check_float("--rate", args.rate, MAX_RATE_HZ)
    check_float("--batch-interval", args.batch_interval, MAX_INTERVAL_S)
    check_float("--interval", args.interval, MAX_INTERVAL_S, low=MIN_REPORT_INTERVAL_S)
    config = fleet_dir(args.fleet)
    from firmware_sim.fleet import FleetOptions, run_fleet  # noqa: PLC0415 - the sim extra

    options = FleetOptions(fleet_dir=config, devices=args.devices, duration_s=args.duration,
                           rate_hz=args.rate, prefix=args.prefix,
                           batch_interval_s=args.batch_interval, report_every_s=args.interval)
    progress = sys.stderr if args.json else sys.stdout
    try:
        result = run_fleet(options, progress)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except EdgeproofError as exc:
        return _fail(str(exc))
    print(json.dumps(result, sort_keys=True), flush=True)
    return EXIT_OK if result["unreceipted"] == 0 and result["failed_devices"] == 0 \
        else EXIT_FAILED


def fleet_dir(given: Path) -> Path:
    """The fleet directory ``--fleet`` names: the directory itself, or the directory of a
    ``fleet.toml`` given instead. Anything else is a ConfigError naming the path (never
    some other fleet, such as the one in the parent directory)."""
    if given.is_dir():
        return given
    if given.name == FLEET_FILE and given.is_file():
        return given.parent
    reason = ("no such directory" if not given.exists()
              else f"neither a directory nor a {FLEET_FILE}")
    raise ConfigError(f"--fleet {given}: not a fleet directory ({reason})")


if __name__ == "__main__":
    sys.exit(main())
