"""contracts/ compiled with the pinned solcjs and deployed on a test node.

:func:`compiled` runs ``node contracts/compile.js`` (solc and OpenZeppelin Contracts from
``.tools/node_modules``, installed by ``make chain``) once per process and keeps the ABI and
bytecode of every contract in memory; nothing is written to the repository.
Used by the tests and by the demo.
:class:`Deployment` deploys the reward token and the distributor with keys the test names.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode
from eth_account import Account
from eth_utils.address import to_checksum_address

from firmware_sim.chain import REPO_ROOT, GanacheNode
from osutil.jsonrpc import JsonRpc, quantity
from protocol.keys import Secret
from rewards import distributor
from rewards.chain import send_and_wait

MODULES = REPO_ROOT / ".tools" / "node_modules"
TOKEN_SUPPLY = 10**9 * 10**18


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


def address_of(key: Secret) -> str:
    """The checksum address of a private key."""
    return str(Account.from_key(key.value).address)


def deploy(rpc: JsonRpc, key: Secret, chain_id: int, name: str, *, types: list[str],
           args: list[Any]) -> tuple[str, dict[str, Any]]:
    """Deploy contract ``name`` with constructor ``args``; return its address and receipt."""
    code = compiled()[name].bytecode + encode(types, args)
    receipt = send_and_wait(rpc, key, None, code, chain_id=chain_id)
    return str(to_checksum_address(receipt["contractAddress"])), receipt


@dataclass
class Deployment:
    """A reward token (supply held by ``issuer``) and a distributor owned by ``gateway``."""

    rpc: JsonRpc
    chain_id: int
    issuer: Secret
    gateway: Secret
    token: str = ""
    distributor: str = ""
    distributor_block: int = 0  # the block the distributor was deployed in

    @classmethod
    def on(cls, node: GanacheNode, issuer: Secret, gateway: Secret) -> Deployment:
        """Deploy both contracts on ``node``."""
        made = cls(JsonRpc(node.url, timeout_s=30.0), node.chain_id, issuer, gateway)
        made.token, _ = deploy(made.rpc, issuer, node.chain_id, "RewardToken",
                               types=["string", "string", "address", "uint256"],
                               args=["Edgeproof Reward", "EPR", address_of(issuer),
                                     TOKEN_SUPPLY])
        made.distributor, receipt = deploy(made.rpc, issuer, node.chain_id,
                                     "CumulativeMerkleDistributor",
                                     types=["address", "address"],
                                     args=[made.token, address_of(gateway)])
        made.distributor_block = quantity(receipt.get("blockNumber"), "block number")
        return made

    def send(self, key: Secret, to: str, data: bytes) -> dict[str, Any]:
        """Send a transaction and wait for its (successful) receipt."""
        return send_and_wait(self.rpc, key, to, data, chain_id=self.chain_id)

    def view(self, contract: str, name: str, *addresses: str) -> int:
        """The uint answer of a view call."""
        return distributor.uint(self.rpc.eth_call(contract, distributor.view(name, *addresses)))

    def give(self, to: str, amount: int) -> None:
        """Move tokens from the issuer to ``to`` (a company that will fund)."""
        self.send(self.issuer, self.token, distributor.transfer(to, amount))

    def fund(self, company: Secret, amount: int, terms: bytes) -> dict[str, Any]:
        """Approve and fund the distributor from ``company``."""
        self.send(company, self.token, distributor.approve(self.distributor, amount))
        return self.send(company, self.distributor, distributor.fund(amount, terms))

    def balance(self, address: str) -> int:
        """The token balance of ``address``."""
        return self.view(self.token, "balanceOf", address)
