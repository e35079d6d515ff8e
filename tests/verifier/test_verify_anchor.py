"""edgeproof-verify --rpc against a real local chain (ganache) and a real gateway."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.broker import MosquittoBroker
from firmware_sim.chain import ETHER, GanacheNode
from protocol.bundle import ProofBundle
from protocol.keys import write_secret_file
from tests.gateway.conftest import start_gateway
from tests.gateway.gwkit import DeviceClient, TestDevice, register, write_gateway_files
from tests.gateway.test_eth_anchor import CHAIN_ID, eth_key, wait_for_anchor
from verifier.cli import main as verify

GATEWAY_ETH_KEY = eth_key(101)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[GanacheNode]:
    node = GanacheNode(tmp_path / "chain", accounts=((GATEWAY_ETH_KEY, 10 * ETHER),))
    node.start()
    try:
        yield node
    finally:
        node.kill()


def test_anchored_record_verifies_with_its_transaction_online_and_offline(
    chain: GanacheNode, broker: MosquittoBroker, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    gw_dir = tmp_path / "gw"
    gw_dir.mkdir()
    write_secret_file(gw_dir / "eth.key", GATEWAY_ETH_KEY.encode() + b"\n")
    extra = f"""
[anchor]
backend = "ethereum"
rpc_url = "{chain.url}"
key_file = "eth.key"
chain_id = {CHAIN_ID}
interval_s = 0.2
"""
    running = start_gateway(write_gateway_files(gw_dir, broker.port, interval_s=0.2,
                                                extra=extra))
    devices = DeviceClient(broker.port, running.verifier)
    bundle = tmp_path / "anchored.json"
    try:
        device = TestDevice.create("anchored-1", 71)
        register(running.base_url, device)
        devices.send(device, device.records(6), batch_id=1)
        devices.wait_for(device.device_id, 1)
        wait_for_anchor(running.base_url, size=6)
        assert verify(["record", "--gateway", running.base_url, "--leaf", "2",
                       "--gateway-key", running.verifier, "--rpc", chain.url,
                       "--save", str(bundle), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert [c["check"] for c in report["checks"]][-1] == "anchor"
    finally:
        devices.close()
        running.stop()
    chain.kill()  # offline from here: neither gateway nor chain
    assert verify(["bundle", str(bundle), "--gateway-key", running.verifier]) == 0
    assert "ok  anchor:" in capsys.readouterr().out
    saved = ProofBundle.from_json(bundle.read_text())
    assert saved.anchor is not None
    forged = dataclasses.replace(saved, anchor=dataclasses.replace(
        saved.anchor, tx_input=saved.anchor.tx_input[:4] + bytes(32)))
    bundle.write_text(forged.to_json())
    assert verify(["bundle", str(bundle), "--gateway-key", running.verifier]) == 1
    assert "FAILED: anchor:" in capsys.readouterr().err
