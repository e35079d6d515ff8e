"""``edgeproof-sim fleet`` against a real broker and gateway: every record a simulated
device sends is receipted exactly once and logged exactly once, and a second run continues
every device's chain instead of reusing a sequence number (which the gateway would flag as
equivocation)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from firmware_sim.cli import main
from firmware_sim.stack import Stack
from protocol.signed import parse_signed_record
from provisioning.devices_store import load_records
from provisioning.fleet import load_fleet

DEVICES = 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("fleet"))
    try:
        s.start()
        yield s
    finally:
        s.close()


def run_fleet(stack: Stack, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    code = main(["fleet", "--fleet", str(stack.fleet_config), "--devices", str(DEVICES),
                 "--json", *args])
    out = capsys.readouterr().out.strip().splitlines()
    result: dict[str, Any] = json.loads(out[-1])
    assert code == 0, result
    return result


def logged_chains(stack: Stack) -> dict[str, list[tuple[int, int]]]:
    """Per fleet device: the (seq, boot) of every logged record, in seq order."""
    chains = {}
    for rec in load_records(load_fleet(stack.fleet_dir)):
        leaves = requests.get(f"{stack.gateway_url}/v1/devices/{rec.device_id}/records",
                              params={"limit": 1000}, timeout=5).json()["records"]
        chains[rec.name] = [(leaf["seq"], parse_signed_record(bytes.fromhex(leaf["record"]))[1]
                             .boot) for leaf in leaves]
    return chains


def test_every_record_sent_is_receipted_once_and_logged_once(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_fleet(stack, capsys, "--duration", "8", "--rate", "2")
    assert result["devices"] == DEVICES
    assert result["failed_devices"] == 0
    # Every device sent (no count per time window: a loaded machine sends fewer, and that
    # is not what this test is about).
    assert result["records_sent"] >= DEVICES
    assert result["accepted"] == result["receipted"] == result["records_sent"]
    assert result["duplicates"] == result["rejected"] == result["unreceipted"] == 0
    assert result["p50_latency_ms"] > 0
    stats = stack.stats()
    assert stats["log_size"] == stats["records_accepted"] == result["records_sent"]
    assert stats["records_duplicate"] == 0
    assert sum(stats["rejections"].values()) == 0
    chains = logged_chains(stack)
    assert len(chains) == DEVICES  # provisioned through the real path: device add --count
    for name, chain in chains.items():
        assert chain, name
        assert [seq for seq, _ in chain] == list(range(len(chain))), name


def test_second_run_continues_each_chain_without_reusing_a_sequence_number(
        stack: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    before = stack.stats()["log_size"]
    if before == 0:
        run_fleet(stack, capsys, "--duration", "2")
        before = stack.stats()["log_size"]
    result = run_fleet(stack, capsys, "--duration", "3", "--rate", "2")
    assert result["accepted"] == result["records_sent"] > 0
    assert result["rejected"] == 0
    stats = stack.stats()
    assert stats["log_size"] == before + result["records_sent"]
    assert stats["equivocations"] == 0
    assert stats["devices_equivocated"] == 0
    for name, chain in logged_chains(stack).items():
        seqs = [seq for seq, _ in chain]
        assert seqs == list(range(len(seqs))), name
        boots = [boot for _, boot in chain]
        assert boots == sorted(boots), name
        assert boots[-1] > boots[0], name  # a new boot per run
