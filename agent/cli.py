"""``edgeproof-agent``: keygen, run, status.

Thin by design: parse arguments, build the config, call the service, turn expected errors
into one line on stderr and a non-zero exit code (1 runtime, 2 configuration).

    edgeproof-agent keygen --state-dir DIR
    edgeproof-agent run --config FILE [--simulate]
    edgeproof-agent run --simulate --state-dir DIR --broker URL --gateway-key KEY
    edgeproof-agent status [--config FILE | --state-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from agent.clock import SystemClock
from agent.config import AgentConfig, env_overrides, load_config
from agent.identity import create_identity
from agent.run import run_agent, stop_on_signals
from agent.service import ServiceOptions
from agent.status import collect_status
from osutil.cli import add_log_level, add_version, run_command
from osutil.lograte import service_logging
from protocol.errors import ConfigError

PROG = "edgeproof-agent"
DEFAULT_CONFIG = Path("/etc/edgeproof/agent.toml")  # where systemd/install.sh puts it

# Laptop mode (run --simulate without --config): the simulated wiring of firmware_sim, every
# sensor reporting every few seconds so records flow at once.
LAPTOP_DEFAULTS: dict[str, object] = {
    "sensors": [
        {"kind": "dht22", "stream": "climate", "pin": 4, "interval_s": 5.0},
        {"kind": "cpu_temp", "stream": "cpu", "interval_s": 5.0},
        {"kind": "power_sense", "stream": "tv", "pin": 17, "interval_s": 5.0},
        {"kind": "motion", "stream": "presence", "pin": 27, "interval_s": 5.0},
    ],
    "usage": {"input": "tv", "rate_micro_per_hour": 1_000_000,
              "checkpoint_interval_s": 30.0, "report_interval_s": 60.0},
    "uplink": {"batch_interval_s": 2.0},
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (docs/CLI.md)."""
    return run_command(PROG, lambda: run_cli(argv, os.environ))


def run_cli(argv: list[str] | None, environ: Mapping[str, str]) -> int:
    """:func:`main` with the environment passed in (tests use this)."""
    args = _parser().parse_args(argv)
    return run_command(PROG, lambda: int(args.func(args, environ)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="The edgeproof device agent: read sensors, sign and seal "
        "every reading, keep it in a crash-safe outbox and send it to the gateway.",
        epilog="Exit status: 0 ok, 1 runtime failure, 2 usage or configuration error, "
        "130 interrupted (docs/CLI.md).")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    keygen = sub.add_parser("keygen", help="create the device key (never overwrites one)",
                            description="Create the device's Ed25519 key in STATE_DIR "
                            "(mode 0600) and print its public key in hex.")
    keygen.add_argument("--state-dir", type=Path, help="where the key goes "
                        "(default $EDGEPROOF_STATE_DIR)")
    keygen.add_argument("--json", action="store_true", help="print JSON")
    keygen.set_defaults(func=_cmd_keygen)

    run = sub.add_parser("run", help="run the agent (systemd runs this)",
                         description="Run the agent. With --config FILE as a service; "
                         "without it (laptop mode) --simulate, --state-dir, --broker and "
                         "--gateway-key are needed. Flags override $EDGEPROOF_* variables, "
                         "which override the file.")
    run.add_argument("--config", type=Path, help="the agent's TOML configuration")
    run.add_argument("--simulate", action="store_true",
                     help="use simulated hardware (the only way to get it)")
    run.add_argument("--state-dir", help="device key, outbox and state (overrides config)")
    run.add_argument("--broker", help="mqtt://host:1883 or mqtts://host:8883")
    run.add_argument("--gateway-key", help="gateway verifier key text, or a file holding it")
    run.add_argument("--seed", type=int, default=None, help="simulation seed (default 1)")
    add_log_level(run)
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", help="outbox, dead letters, receipts, credit",
                            description="Show the outbox depth and bytes, dead letters by "
                            "reason, drops, the last receipt, whether receipts are overdue, "
                            "and credit accrued/sent/settled.")
    status.add_argument("--config", type=Path, help="the agent's TOML configuration "
                        f"(default {DEFAULT_CONFIG} unless --state-dir or "
                        "$EDGEPROOF_STATE_DIR is given)")
    status.add_argument("--state-dir", type=Path, help="the agent's state directory")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_cmd_status)
    return parser


# --- keygen --------------------------------------------------------------------------------


def _cmd_keygen(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    state_dir = args.state_dir or _env_path(environ, "EDGEPROOF_STATE_DIR")
    if state_dir is None:
        raise ConfigError("keygen: --state-dir is required")
    identity = create_identity(state_dir / "device.key")
    if args.json:
        print(json.dumps({"public_key": identity.public_key_hex,
                          "device_id": identity.device_id.hex(),
                          "key_file": str(state_dir / "device.key")}))
    else:
        print(identity.public_key_hex)
        print(f"created {state_dir / 'device.key'} (device id {identity.device_id.hex()})",
              file=sys.stderr)
    return 0


# --- run -----------------------------------------------------------------------------------


def build_run_config(args: argparse.Namespace, environ: Mapping[str, str]) -> AgentConfig:
    """The config ``run`` would use: file (or laptop defaults), env, then flags."""
    if args.config is None and not args.simulate:
        raise ConfigError("run: --config FILE is required (or --simulate for laptop mode)")
    overrides = env_overrides(environ)
    for target, value in ((("agent", "state_dir"), args.state_dir),
                          (("mqtt", "broker"), args.broker),
                          (("gateway", "key"), args.gateway_key),
                          (("agent", "log_level"), args.log_level),
                          (("agent", "sim_seed"), args.seed)):
        if value is not None:
            overrides[target] = value
    if args.config is None:
        for flag, target in (("--state-dir", ("agent", "state_dir")),
                             ("--broker", ("mqtt", "broker")),
                             ("--gateway-key", ("gateway", "key"))):
            if target not in overrides:
                raise ConfigError(f"run: laptop mode needs {flag} (or --config FILE)")
    config = load_config(args.config, overrides, LAPTOP_DEFAULTS)
    backend = "simulated" if args.simulate else "hardware"
    return _with_backend(config, backend)


def _with_backend(config: AgentConfig, backend: str) -> AgentConfig:
    from dataclasses import replace  # noqa: PLC0415 - only needed here
    return replace(config, backend=backend)


def run_config(argv: list[str], environ: Mapping[str, str]) -> AgentConfig:
    """The config ``edgeproof-agent run ARGV`` would use (for runners that inject a clock
    or service options). Raises ConfigError; exits with a usage message on bad flags."""
    return build_run_config(_parser().parse_args(["run", *argv]), environ)


def _cmd_run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    stop = threading.Event()
    # First: a SIGTERM during start-up still ends in a clean shutdown.
    with stop_on_signals(stop, PROG):
        return _run_until_stopped(args, environ, stop)


def _run_until_stopped(args: argparse.Namespace, environ: Mapping[str, str],
                       stop: threading.Event) -> int:
    config = build_run_config(args, environ)
    # Logs to stdout, repeats limited; main() may run many times in one process (tests):
    # the logging set up here ends with the run (osutil.lograte.service_logging).
    with service_logging(config.log_level):
        log = logging.getLogger(PROG)
        # No state directory yet: run_agent makes it once the key is read, and laptop mode
        # makes a key (and its directory) first; a missing key must leave nothing behind.
        if args.config is None and not config.key_file.exists():
            identity = create_identity(config.key_file)
            log.warning("created a new device identity in %s: public key %s (device id %s); "
                        "enroll it with the gateway", config.key_file,
                        identity.public_key_hex, identity.device_id.hex())
        return run_agent(config, SystemClock(), ServiceOptions(environ=dict(environ)), stop)


# --- status --------------------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    state_dir = args.state_dir or _env_path(environ, "EDGEPROOF_STATE_DIR")
    config = args.config
    if config is None and state_dir is None:
        if not DEFAULT_CONFIG.exists():
            raise ConfigError(f"status: no {DEFAULT_CONFIG}; give --config FILE or "
                              f"--state-dir DIR")
        config = DEFAULT_CONFIG
    if config is not None:
        state_dir = load_config(config, env_overrides(environ)).state_dir
    assert state_dir is not None
    status = collect_status(state_dir)
    status["config"] = None if config is None else str(config)
    if args.json:
        print(json.dumps(status, sort_keys=True))
    else:
        print(_status_text(status))
    return 0


def _status_text(status: dict[str, object]) -> str:
    outbox = status["outbox"]
    credit = status["credit"]
    agent = status["agent"]
    assert isinstance(outbox, dict)
    assert isinstance(credit, dict)
    assert isinstance(agent, dict)
    dead = outbox["dead_letters"]
    dead_text = ", ".join(f"{k}: {v}" for k, v in dead.items()) if dead else "none"
    last = outbox.get("last_receipt_ms")
    last_text = "never" if last is None else (
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(last) / 1000))
        + f" (batch {outbox.get('last_receipt_batch')})")
    uplink = agent.get("uplink") if isinstance(agent.get("uplink"), dict) else {}
    assert isinstance(uplink, dict)
    uplink_text = uplink.get("state", "unknown")
    if uplink.get("error"):
        uplink_text = f"FAILED: {uplink['error']}"
    source = f" (from {status['config']})" if status.get("config") else ""
    lines = [
        f"state dir     {status['state_dir']}{source}",
        f"outbox        {outbox['depth']} records, {outbox['bytes']} bytes "
        f"(last seq {outbox['last_seq']})",
        f"dead letters  {dead_text}",
        f"drops         {outbox['dropped']} records in {outbox['drop_events']} events, "
        f"{outbox['gaps_declared']} gaps declared, {outbox['corrupt_outboxes']} damaged "
        f"outboxes replaced",
        f"last receipt  {last_text}",
        f"receipts      {_receipts_text(agent.get('receipts'))}",
        f"credit        accrued {_micro(credit['accrued_micro'])}, "
        f"sent {_micro(credit['sent_micro'])}, settled {_micro(credit['settled_micro'])}, "
        f"{credit['corrupt_credits']} damaged credits files replaced"
        f"{_rate_text(agent.get('credit_rate_micro_per_hour', -1))}",
        f"uplink        {uplink_text}{_broker_text(uplink)} "
        f"(as of the agent's last status write)",
    ]
    plain = agent.get("plaintext_streams")
    if isinstance(plain, list) and plain:
        lines.append(f"sealing       plaintext (no recipients): {', '.join(map(str, plain))}")
    rotation = agent.get("rotation")
    if isinstance(rotation, dict) and rotation.get("state", "none") != "none":
        lines.append(f"key rotation  {_rotation_text(rotation)}")
    grants = status.get("grants")
    if isinstance(grants, dict):
        lines.append(f"grants        {_grants_text(grants)}")
    local = agent.get("local_mqtt")
    if isinstance(local, dict):
        lines.append(f"local broker  {_local_text(local)}")
        payout = local.get("payout")
        if isinstance(payout, dict):
            lines.append(f"payout        {_payout_text(payout)}")
    notes = status.get("quality")
    for note in notes if isinstance(notes, list) else []:
        if isinstance(note, dict):
            lines.append(f"quality       {_quality_text(note)}")
    return "\n".join(lines)


def _quality_text(note: dict[str, object]) -> str:
    """One validator's latest verdict on this sensor (docs/QUALITY.md)."""
    state = str(note.get("state"))
    reasons = note.get("reasons")
    why = f" ({', '.join(map(str, reasons))})" if isinstance(reasons, list) and reasons else ""
    start = note.get("window_start_ms")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start // 1000)) \
        if isinstance(start, int) else "?"
    return (f"{note.get('site')} {note.get('field')}: "
            f"{state.upper() if state in {'suspect', 'faulty'} else state}{why} "
            f"in the window from {when}, by validator {str(note.get('validator'))[:16]}")


def _grants_text(grants: dict[str, object]) -> str:
    listed = grants.get("grants")
    items = listed if isinstance(listed, list) else []
    in_force = [g for g in items if isinstance(g, dict) and g.get("in_force")]
    text = (f"{len(in_force)} in force of {len(items)} "
            f"({', '.join(str(g['derived_stream']) for g in in_force) or 'none'}), "
            f"{grants.get('revoked')} revoked")
    refused = grants.get("refused")
    if isinstance(refused, dict) and refused:
        text += "; REFUSED: " + ", ".join(f"{k} {v}" for k, v in sorted(refused.items()))
    return text


def _local_text(local: dict[str, object]) -> str:
    """The owner's broker ([local_mqtt]): state, error, what was published and lost."""
    counters = local.get("counters")
    c = counters if isinstance(counters, dict) else {}
    state = str(local.get("state"))
    if local.get("error"):
        state += f" ({local['error']})"
    return (f"{state} {local.get('broker')}: {c.get('published', 0)} published, "
            f"{c.get('superseded', 0)} superseded, "
            f"{c.get('connect_failures', 0) + c.get('connack_timeouts', 0)} failed connects")


def _payout_text(payout: dict[str, object]) -> str:
    """The owner's payout notice as last verified, and what was refused (by reason)."""
    counters = payout.get("counters")
    c = counters if isinstance(counters, dict) else {}
    epoch, entitled = payout.get("epoch"), payout.get("entitled_micro")
    claimed = payout.get("claimed_micro")
    if isinstance(epoch, int) and isinstance(entitled, int):
        text = f"epoch {epoch}: {entitled / 1e6:g} credits payable"
        if isinstance(claimed, int):
            text += f", {claimed / 1e6:g} claimed, {max(0, entitled - claimed) / 1e6:g} claimable"
    else:
        text = "no verified notice yet"
    refused = {k: v for k, v in c.items() if k not in ("accepted", "not_yet")}
    if refused:
        text += "; REFUSED: " + ", ".join(f"{k} {v}" for k, v in sorted(refused.items()))
    if payout.get("error"):
        text += f" ({payout['error']})"
    return text


def _receipts_text(receipts: object) -> str:
    if not isinstance(receipts, dict):
        return "unknown (the agent has not written its status yet)"
    if receipts.get("overdue"):
        return (f"OVERDUE: no verified receipt for {receipts.get('waiting_s')} s; "
                f"{receipts.get('problem')}")
    if receipts.get("waiting_s") is None:
        return "ok (nothing waiting)"
    return f"ok (oldest sent batch waiting {receipts.get('waiting_s')} s)"


def _rate_text(rate: object) -> str:
    if rate is None:
        return " (no [usage]: earns nothing)"
    return " (rate 0: earns nothing; see usage.rate_micro_per_hour)" if rate == 0 else ""


def _broker_text(uplink: dict[str, object]) -> str:
    return f", broker {uplink['broker']}" if uplink.get("broker") else ""


def _rotation_text(rotation: dict[str, object]) -> str:
    text = f"{rotation.get('state')} (record {rotation.get('seq')})"
    if rotation.get("reason"):
        text += f": {rotation['reason']}"
    if rotation.get("error"):
        text += f"; {rotation['error']}"
    return text


def _micro(value: object) -> str:
    return "unknown" if value is None else f"{value} micro-credits"


def _env_path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name)
    return Path(value) if value else None


if __name__ == "__main__":
    sys.exit(main())
