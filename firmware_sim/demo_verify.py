"""The demo's last act: pick a logged record, prove it offline, and open it as a recipient.

It runs the verifier's own commands (``edgeproof-verify``, in this process):

1. ``record --leaf N --gateway-key KEY --save BUNDLE``: fetch the record, its inclusion
   proof and the latest checkpoint from the gateway's public API and check them against
   the gateway key the fleet trusts, saving everything as a proof bundle;
2. ``bundle BUNDLE --gateway-key KEY``: check the saved bundle again with no network;
3. ``decrypt --device ID --key KEY --stream S``: the key the stream was sealed to (the
   device's owner's) reads the values;
4. the same with a recipient nobody granted (``acme``: only the operator named it in the
   device's config): it reads nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_sim.stack import SimDevice, Stack, StackError
from verifier import cli as verify_cli

PREFERRED_STREAMS = ("climate", "presence", "cpu", "tv")


@dataclass(frozen=True)
class Pick:
    """The record chosen for verification."""

    device: SimDevice
    leaf_index: int
    seq: int
    stream: str


@dataclass
class Verification:
    """What the verification found; ``verified`` only if both proofs passed."""

    pick: Pick | None = None
    online_checks: list[dict[str, str]] = field(default_factory=list)
    offline_checks: list[dict[str, str]] = field(default_factory=list)
    verified: bool = False
    decrypted: dict[str, Any] = field(default_factory=dict)
    not_granted: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    commands: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        pick = self.pick
        return {
            "verified": self.verified,
            "record": None if pick is None else {
                "device": pick.device.name, "device_id": pick.device.device_id,
                "leaf_index": pick.leaf_index, "seq": pick.seq, "stream": pick.stream},
            "online_checks": self.online_checks, "offline_checks": self.offline_checks,
            "decrypted": self.decrypted, "not_granted": self.not_granted,
            "error": self.error or None,
        }


def run_verifier(argv: list[str]) -> tuple[int, str, str]:
    """Run ``edgeproof-verify ARGV`` here; return (exit code, stdout, last stderr line)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = verify_cli.main(argv)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return code, out.getvalue(), lines[-1] if lines else ""


def pick_record(stack: Stack, devices: list[SimDevice], covered: int) -> Pick:
    """Choose the newest sealed reading (a climate one if any) inside the checkpoint.

    Raises StackError if no device has a reading the latest checkpoint covers.
    """
    best: dict[str, Pick] = {}
    for device in devices:
        data = stack.get(f"/v1/devices/{device.device_id}/records", limit=1000)
        for leaf in data["records"]:
            if leaf["stream"] in PREFERRED_STREAMS and leaf["index"] < covered:
                best[leaf["stream"]] = Pick(device, leaf["index"], leaf["seq"], leaf["stream"])
        if "climate" in best:
            break
    for stream in PREFERRED_STREAMS:
        if stream in best:
            return best[stream]
    raise StackError("no reading was logged and checkpointed; run the demo longer")


def verify(stack: Stack, devices: list[SimDevice], *, covered: int, workdir: Path,
           recipient_key: Path, outsider_key: Path) -> Verification:
    """Verify and open one record; return what passed. Never raises for a failed check."""
    result = Verification()
    try:
        result.pick = pick = pick_record(stack, devices, covered)
        key = stack.verifier_key
        bundle = workdir / "proof-bundle.json"
        result.online_checks = _checks(["record", "--gateway", stack.gateway_url, "--leaf",
                                        str(pick.leaf_index), "--gateway-key", key,
                                        "--save", str(bundle), "--json"])
        result.offline_checks = _checks(["bundle", str(bundle), "--gateway-key", key, "--json"])
        result.verified = True
        result.commands = [f"edgeproof-verify bundle {bundle} --gateway-key '{key}'"]
        result.decrypted = _open(stack, pick, recipient_key)
        result.not_granted = _open(stack, pick, outsider_key)
    except StackError as exc:
        result.error = str(exc)
    return result


def _checks(argv: list[str]) -> list[dict[str, str]]:
    code, out, err = run_verifier(argv)
    if code != 0:
        raise StackError(f"edgeproof-verify {argv[0]}: {err or f'exit {code}'}")
    report = json.loads(out)
    if not report.get("ok") or not report.get("checks"):
        raise StackError(f"edgeproof-verify {argv[0]}: no checks passed")
    return [{"check": c["check"], "detail": c["detail"]} for c in report["checks"]]


def _open(stack: Stack, pick: Pick, key: Path) -> dict[str, Any]:
    code, out, err = run_verifier(["decrypt", "--gateway", stack.gateway_url, "--device",
                                   pick.device.device_id, "--key", str(key), "--stream",
                                   pick.stream, "--json"])
    if not out.strip():
        raise StackError(f"edgeproof-verify decrypt: {err or f'exit {code}'}")
    for opened in json.loads(out):
        if opened["seq"] == pick.seq:
            return {"recipient": key.stem, "status": opened["status"],
                    "values": [_value(v) for v in opened["values"]],
                    "detail": opened.get("detail", "")}
    raise StackError(f"edgeproof-verify decrypt: seq {pick.seq} not among the records")


def _value(v: list[Any]) -> str:
    mantissa, exponent, unit = int(v[0]), int(v[1]), str(v[2])
    if exponent >= 0:
        return f"{mantissa * 10 ** exponent} {unit}"
    sign = "-" if mantissa < 0 else ""
    digits = str(abs(mantissa)).rjust(-exponent + 1, "0")
    return f"{sign}{digits[:exponent]}.{digits[exponent:]} {unit}"
