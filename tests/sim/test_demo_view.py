"""The demo's final report in a file or a pipe: nothing folded at 80 columns."""

from __future__ import annotations

import io
from typing import Any

from firmware_sim.view import DeviceRow, GatewayRow, Snapshot, demo_console, print_report

LONG_COMMAND = ("edgeproof-verify record --gateway http://127.0.0.1:45678 --leaf 12 "
                "--gateway-key 'demo.edgeproof.invalid/log+0a1b2c3d+AXyz...' --save proof.json")


def summary() -> dict[str, Any]:
    return {"verification": {"record": None, "online_checks": [], "offline_checks": []},
            "commands": [LONG_COMMAND], "verified": True, "devices": 3, "duration_s": 60.0,
            "readings": 1234, "committed": 1234, "receipted": 1234, "log_size": 1240,
            "checkpoints": 7, "rejections": 0, "credit_accrued_micro": 1_234_567,
            "credit_settled_micro": 1_234_567}


def snapshot() -> Snapshot:
    devices = tuple(DeviceRow(f"demo-device-{i:03d}", 411, 411, 411, 0, 0, 1_234_567,
                              1_234_567, "connected") for i in range(3))
    return Snapshot(60.0, 60.0, devices, GatewayRow(1240, 7, 1240, 0, 0))


def test_final_table_in_a_pipe_is_not_wrapped_at_80_columns() -> None:
    out = io.StringIO()  # not a terminal, as with `make demo | tee demo.log`
    print_report(demo_console(out), summary(), snapshot())
    lines = out.getvalue().splitlines()
    rows = [line for line in lines if line.lstrip().startswith("demo-device-")]
    assert len(rows) == 3
    for row in rows:  # one line per device: name, every figure, credit and uplink together
        assert row.split() == [row.split()[0], "411", "411", "411", "0", "0", "1.234567",
                               "1.234567", "connected"]
    assert f"re-check it yourself: {LONG_COMMAND}" in lines
    assert any(len(line) > 80 for line in lines)
