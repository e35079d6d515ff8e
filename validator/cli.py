"""``edgeproof-validator``: judge a site's sensors and attest the verdicts on the log.

    edgeproof-validator once --site FILE --gateway URL --signing-key FILE
                             --recipient-key FILE [--state FILE]
                             [--window-s S --bucket-s S] [--settle-s S] [--json]

``once`` reads the site's streams (as the recipient whose X25519 key file is given),
judges every complete window, and submits one signed attestation per window; windows
already attested come back "already logged", so it can run from cron. With ``--state``
it continues from the state file the last run wrote (mode 0600) and judges only the
windows after the last one judged, so a run costs the new windows only. A window is
judged only once it ended ``--settle-s`` seconds ago (default 120), so readings still in
a device's outbox or in flight reach the log first. Exit status
(docs/CLI.md): 0 when every attestation was logged or already there, 1 when the gateway
refused one (the reasons are printed) or could not be reached, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from osutil.cli import EXIT_FAILED, EXIT_OK, add_version, run_command
from protocol.errors import ConfigError
from protocol.keys import load_recipient_key, load_signing_key
from validator.model import Thresholds
from validator.run import Outcome, run_once
from validator.sites import load_site
from verifier.client import DocumentClient

PROG = "edgeproof-validator"
# An agent holds a reading up to its commit window and batch interval (seconds at the
# defaults) and longer while its link is down; two minutes covers a healthy fleet.
SETTLE_S = 120.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Judge co-located sensors and attest the verdicts "
        "(docs/QUALITY.md).", epilog="Exit status: 0 ok, 1 an attestation refused or the "
        "gateway unreachable, 2 usage or configuration error, 130 interrupted (docs/CLI.md).")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    once = sub.add_parser("once", help="judge every complete window and attest it",
                          description="Read the site's streams, judge every complete "
                          "window, submit one signed attestation per window.")
    once.add_argument("--site", required=True, type=Path, metavar="FILE",
                      help="the site file edgeproof-provision site add wrote")
    once.add_argument("--gateway", required=True, metavar="URL", help="http://host:port")
    once.add_argument("--signing-key", required=True, type=Path, metavar="FILE",
                      help="the validator's Ed25519 key file (registered as a recipient)")
    once.add_argument("--recipient-key", required=True, type=Path, metavar="FILE",
                      help="the validator's X25519 recipient key file (mode 0600)")
    once.add_argument("--state", type=Path, metavar="FILE",
                      help="continue from this state file and update it (created mode "
                      "0600 if absent); without it every run judges all history")
    once.add_argument("--window-s", type=int, default=Thresholds.window_s, metavar="S",
                      help=f"window length (default {Thresholds.window_s}; a multiple of "
                      "--bucket-s)")
    once.add_argument("--bucket-s", type=int, default=Thresholds.bucket_s, metavar="S",
                      help=f"the readings' period (default {Thresholds.bucket_s})")
    once.add_argument("--settle-s", type=float, default=SETTLE_S, metavar="S",
                      help=f"judge a window only once it ended S seconds ago, so readings "
                      f"still in flight reach the log first (default {SETTLE_S:g})")
    once.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (docs/CLI.md)."""
    return run_command(PROG, lambda: _run(_parser().parse_args(argv)))


def _run(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    try:
        th = Thresholds(window_s=args.window_s, bucket_s=args.bucket_s)
    except ValueError as exc:
        raise ConfigError(f"--window-s/--bucket-s: {exc}") from None
    if not (0 <= args.settle_s <= 86_400):
        raise ConfigError(f"--settle-s: {args.settle_s:g} is not between 0 and 86400")
    outcome = run_once(DocumentClient(args.gateway), site, load_signing_key(args.signing_key),
                       load_recipient_key(args.recipient_key), time.time_ns() // 1_000_000,
                       th=th, state=args.state, settle_s=args.settle_s)
    _print(outcome, as_json=args.json)
    return EXIT_FAILED if outcome.refused else EXIT_OK


def _print(outcome: Outcome, *, as_json: bool) -> None:
    last = outcome.verdicts[-1] if outcome.verdicts else None
    states = {} if last is None else {v.sensor: v.state for v in last.sensors}
    summary = {"windows": len(outcome.verdicts), "logged": outcome.logged,
               "already_logged": outcome.already_logged, "refused": dict(outcome.refused),
               "skipped_readings": dict(outcome.skipped), "states": states}
    if as_json:
        print(json.dumps(summary, sort_keys=True))
        return
    for verdict in outcome.verdicts:
        flagged = [f"{v.sensor[:8]} {v.state} {','.join(v.reasons)}".strip()
                   for v in verdict.sensors if v.state != "healthy" or v.reasons]
        print(f"window {verdict.start_s}: consensus {verdict.consensus} "
              f"{'; '.join(flagged) or 'all healthy'}")
    print(f"{summary['windows']} windows: {outcome.logged} attested, "
          f"{outcome.already_logged} already logged, refused {dict(outcome.refused)}")
