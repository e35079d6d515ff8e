"""The reward token and the distributor deployed on a test node with keys a test names.

:class:`Deployment` deploys both (rewards.contracts, compiled by the pinned solcjs) and
funds, transfers and reads them for the tests, the demo and the bench.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from firmware_sim.chain import GanacheNode
from osutil.jsonrpc import JsonRpc
from protocol.keys import Secret
from rewards import distributor, ethkey
from rewards.chain import send_and_wait
from rewards.contracts import deploy_payout


def address_of(key: Secret) -> str:
    """The checksum address of a private key."""
    return ethkey.address_of(key.value)


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
        deployed = deploy_payout(made.rpc, issuer, node.chain_id, holder=address_of(issuer),
                                 owner=address_of(gateway))
        made.token, made.distributor = deployed.token, deployed.distributor
        made.distributor_block = deployed.distributor_block
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
