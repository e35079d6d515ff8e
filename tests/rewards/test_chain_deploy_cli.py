"""``edgeproof-gateway chain deploy`` on a real ganache node: the token and the distributor
deployed with the gateway's chain key, and a [payout] section the gateway loads."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from firmware_sim.chain import GanacheNode
from firmware_sim.solidity import address_of
from gateway.cli import main as gateway_main
from gateway.config import load_config
from osutil.jsonrpc import JsonRpc
from protocol.keys import write_secret_file
from rewards import distributor as abi
from tests.gateway.gwkit import write_gateway_files
from tests.rewards.conftest import KEYS


def height(chain: GanacheNode) -> int:
    rpc = JsonRpc(chain.url)
    try:
        return rpc.block_number()
    finally:
        rpc.close()


def view(rpc: JsonRpc, contract: str, name: str, *addresses: str) -> bytes:
    return rpc.eth_call(contract, abi.view(name, *addresses))


def test_chain_deploy_writes_the_payout_section_of_contracts_the_gateway_key_owns(
        chain: GanacheNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "payout-eth.key"
    write_secret_file(key, KEYS["gateway"].value.hex().encode())
    holder = address_of(KEYS["company"])
    snippet = tmp_path / "payout.toml"
    assert gateway_main(["chain", "deploy", "--rpc", chain.url, "--key", str(key),
                         "--token-holder", holder, "--supply", "5000", "--out", str(snippet),
                         "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    section = tomllib.loads(snippet.read_text())["payout"]
    assert section["distributor"] == printed["distributor"]
    assert section["chain_id"] == chain.chain_id
    rpc = JsonRpc(chain.url, timeout_s=30.0)
    try:
        distributor = section["distributor"]
        receipt_block = section["distributor_block"]
        assert rpc.call("eth_getCode", distributor, hex(receipt_block)) != "0x"
        assert rpc.call("eth_getCode", distributor, hex(receipt_block - 1)) == "0x"
        owner = "0x" + view(rpc, distributor, "owner")[-20:].hex()
        assert owner.lower() == address_of(KEYS["gateway"]).lower()  # only it posts roots
        assert abi.uint(view(rpc, printed["token"], "balanceOf", holder)) == 5000
    finally:
        rpc.close()
    files = write_gateway_files(tmp_path / "gw", 1883, extra=snippet.read_text())
    payout = load_config(files.config).payout
    assert payout is not None
    assert payout.distributor == distributor
    assert payout.distributor_block == receipt_block
    # Never overwrites: a second run with the same --out deploys nothing.
    before = snippet.read_text()
    assert gateway_main(["chain", "deploy", "--rpc", chain.url, "--key", str(key),
                         "--out", str(snippet)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert snippet.read_text() == before
    assert height(chain) == receipt_block  # nothing sent


def test_chain_deploy_refuses_a_key_file_others_can_read_and_deploys_nothing(
        chain: GanacheNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "payout-eth.key"
    write_secret_file(key, KEYS["gateway"].value.hex().encode())
    key.chmod(0o644)
    before = height(chain)
    assert gateway_main(["chain", "deploy", "--rpc", chain.url, "--key", str(key)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeproof-gateway: error:")
    assert KEYS["gateway"].value.hex() not in err
    assert height(chain) == before
