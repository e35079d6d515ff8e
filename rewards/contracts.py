"""contracts/ compiled with the pinned solcjs, and the reward token and distributor deployed.

:func:`compiled` runs ``node contracts/compile.js`` (solc and OpenZeppelin Contracts from
``.tools/node_modules``, installed by ``make chain``) once per process and keeps the ABI and
bytecode of every contract in memory; nothing is written to the repository.
:func:`deploy_payout` deploys the token (its supply minted to a holder) and the distributor
(owned by the key that will post roots): what ``edgeproof-gateway chain deploy`` runs, and
what the tests and the demo deploy with.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi.abi import encode
from eth_utils.address import to_checksum_address

from osutil.jsonrpc import JsonRpc, quantity
from protocol.keys import Secret
from rewards.chain import send_and_wait

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULES = REPO_ROOT / ".tools" / "node_modules"
TOKEN_SUPPLY = 10**9 * 10**18  # a billion tokens of 18 decimals


@dataclass(frozen=True)
class Contract:
    """One compiled contract: its ABI and creation bytecode."""

    abi: list[dict[str, Any]]
    bytecode: bytes


@functools.cache
def compiled() -> dict[str, Contract]:
    """Compile contracts/*.sol (once per process); raise RuntimeError saying why it failed."""
    node = shutil.which("node")
    if node is None or not (MODULES / "solc").is_dir():
        raise RuntimeError("node or solc not found; install them with: make chain")
    done = subprocess.run(  # noqa: S603 - node from PATH, our own compile script
        [node, str(REPO_ROOT / "contracts" / "compile.js"), str(MODULES)],
        capture_output=True, check=False, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"solc failed: {done.stderr.decode(errors='replace')[-2000:]}")
    found: dict[str, Contract] = {}
    for source, contracts in json.loads(done.stdout).items():
        if "/" in source:
            continue  # the OpenZeppelin parts themselves
        for name, out in contracts.items():
            found[name] = Contract(out["abi"], bytes.fromhex(out["evm"]["bytecode"]["object"]))
    return found


def deploy(rpc: JsonRpc, key: Secret, chain_id: int, name: str, *, types: list[str],
           args: list[Any]) -> tuple[str, dict[str, Any]]:
    """Deploy contract ``name`` with constructor ``args``; return its address and receipt."""
    code = compiled()[name].bytecode + encode(types, args)
    receipt = send_and_wait(rpc, key, None, code, chain_id=chain_id)
    return str(to_checksum_address(receipt["contractAddress"])), receipt


@dataclass(frozen=True)
class Deployed:
    """Where the reward token and the distributor are."""

    chain_id: int
    token: str
    distributor: str
    distributor_block: int  # the block the distributor was deployed in


def deploy_payout(rpc: JsonRpc, key: Secret, chain_id: int, *, holder: str, owner: str,
                  supply: int = TOKEN_SUPPLY) -> Deployed:
    """Deploy the token (``supply`` minted to ``holder``) and the distributor (owned by
    ``owner``, the address that posts roots), both sent from ``key``."""
    token, _ = deploy(rpc, key, chain_id, "RewardToken",
                      types=["string", "string", "address", "uint256"],
                      args=["Edgeproof Reward", "EPR", holder, supply])
    distributor, receipt = deploy(rpc, key, chain_id, "CumulativeMerkleDistributor",
                                  types=["address", "address"], args=[token, owner])
    return Deployed(chain_id, token, distributor,
                    quantity(receipt.get("blockNumber"), "block number"))


def payout_snippet(deployed: Deployed, rpc_url: str, key_file: Path) -> str:
    """The ``[payout]`` section of a gateway config for ``deployed`` (TOML)."""
    return (f"# reward token {deployed.token}\n"
            "[payout]\n"
            f"rpc_url = {json.dumps(rpc_url)}\n"
            f"key_file = {json.dumps(str(key_file))}\n"
            f"chain_id = {deployed.chain_id}\n"
            f'distributor = "{deployed.distributor}"\n'
            f"distributor_block = {deployed.distributor_block}\n")
