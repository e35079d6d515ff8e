"""The demo's last act: the credit the owner's TVs mined lands in the owner's wallet as tokens.

Before the gateway starts, :meth:`PayoutStory.prepare` starts a private ganache node (its
own database in the demo directory), deploys the reward token and the cumulative Merkle
distributor (:mod:`firmware_sim.solidity`, the pinned solc from ``.tools/``) and returns the
gateway's ``[payout]`` section (the distributor is owned by the gateway's payout key).
:meth:`fund` has the company pay tokens into the distributor for its request's terms
(``fund(amount, terms = request id)``). After the devices stopped and a checkpoint covers
their usage, :meth:`claim` does what an owner does: ``edgeproof-owner wallet bind``, wait for
the gateway to post an epoch that pays the owner's whole settled credit, ``edgeproof-owner
wallet claim``, and reads the wallet's token balance from the chain.

Every key is made fresh for the run (the wallet key in a 0600 file, never printed).
"""

from __future__ import annotations

import contextlib
import io
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_sim.chain import ETHER, GanacheNode
from firmware_sim.solidity import Deployment, address_of
from firmware_sim.stack import Stack, StackError
from osutil.jsonrpc import JsonRpc
from owner.cli import main as owner_main
from protocol.errors import EdgeproofError
from protocol.keys import OwnerKey, Secret, save_owner_key, write_secret_file
from rewards import wallet
from rewards.documents import BASE_UNITS_PER_MICRO, owner_name

FUNDING_TOKENS = 1_000  # what the company pays in (whole tokens)
EPOCH_TIMEOUT_S = 60.0


@dataclass
class PayoutResult:
    """What the act showed (the demo summary's ``payout`` member)."""

    distributor: str = ""
    wallet: str = ""
    funded: str = "0"  # base units, decimal strings (beyond JSON's safe integers)
    settled_micro: int = 0
    claimed: str = "0"
    balance: str = "0"
    ok: bool = False
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class PayoutStory:
    """A chain, the contracts and the owner's wallet for one demo run."""

    workdir: Path
    note: Callable[[str], None]
    check: Callable[[], None]
    keys: dict[str, Secret] = field(default_factory=lambda: {
        name: Secret(secrets.token_bytes(32))
        for name in ("issuer", "gateway", "company", "wallet")})
    node: GanacheNode | None = None
    deployed: Deployment | None = None
    result: PayoutResult = field(default_factory=PayoutResult)
    pid: int | None = None  # the node's process and port, for the summary
    port: int | None = None


    def prepare(self) -> str:
        """Start the node, deploy the contracts; return the gateway's ``[payout]`` section.

        Raises StackError (node or compiler missing, deployment failed)."""
        chain_dir = self.workdir / "chain"
        chain_dir.mkdir(parents=True, exist_ok=True)
        accounts = tuple(("0x" + key.value.hex(), 100 * ETHER) for key in self.keys.values())
        self.node = GanacheNode(chain_dir, accounts=accounts)
        try:
            self.node.start()
            assert self.node.process is not None
            self.pid, self.port = self.node.process.pid, self.node.port
            self.deployed = Deployment.on(self.node, self.keys["issuer"], self.keys["gateway"])
        except (RuntimeError, EdgeproofError) as exc:
            raise StackError(f"chain: {exc}") from None
        self.result.distributor = self.deployed.distributor
        key_file = chain_dir / "payout-eth.key"
        write_secret_file(key_file, self.keys["gateway"].value.hex().encode())
        self.note(f"chain: ganache {self.node.url} (chain {self.node.chain_id}); reward token "
                  f"{self.deployed.token} and distributor {self.deployed.distributor} deployed, "
                  f"the distributor owned by the gateway's payout key")
        return (f'[payout]\nrpc_url = "{self.node.url}"\nkey_file = "{key_file}"\n'
                f'chain_id = {self.node.chain_id}\ndistributor = "{self.deployed.distributor}"\n'
                "interval_s = 1\n")

    def fund(self, company: str, request_id: bytes) -> None:
        """The company pays FUNDING_TOKENS into the distributor for its request's terms."""
        assert self.deployed is not None
        amount = FUNDING_TOKENS * 10**18
        self.deployed.give(address_of(self.keys["company"]), amount)
        self.deployed.fund(self.keys["company"], amount, request_id)
        self.result.funded = str(amount)
        self.note(f"payout: {company} funds the distributor with {FUNDING_TOKENS} tokens for "
                  f"its request (terms = request id {request_id[:6].hex()}..)")

    def claim(self, stack: Stack, owner: OwnerKey) -> PayoutResult:
        """Bind the owner's wallet, wait for the epoch, claim; a failure is recorded."""
        try:
            self._claim(stack, owner)
        except (EdgeproofError, OSError) as exc:
            self.result.error = f"payout: {exc}"
        return self.result

    def _claim(self, stack: Stack, owner: OwnerKey) -> None:
        assert self.node is not None
        assert self.deployed is not None
        owner_file, wallet_file = self.workdir / "owner.key", self.workdir / "wallet.key"
        save_owner_key(owner_file, owner)
        write_secret_file(wallet_file, self.keys["wallet"].value.hex().encode())
        self.result.wallet = address_of(self.keys["wallet"])
        endpoints = ["--wallet-key", str(wallet_file), "--gateway", stack.gateway_url,
                     "--rpc", self.node.url]
        self.note("payout: $ edgeproof-owner wallet bind --key owner.key --wallet-key "
                  "wallet.key ...")
        if self._owner(["wallet", "bind", "--key", str(owner_file), *endpoints]) != 0:
            raise StackError("the wallet binding was refused")
        settled = self._settled(stack, owner_name(owner.owner_id))
        self.result.settled_micro = settled
        self.note(f"payout: the owner's devices settled {settled} micro-credits; waiting for "
                  f"the gateway to post an epoch paying them ({settled / 1e6:.6f} tokens)")
        self._wait_entitled(stack, settled * BASE_UNITS_PER_MICRO)
        self.note("payout: $ edgeproof-owner wallet claim --wallet-key wallet.key ...")
        if self._owner(["wallet", "claim", *endpoints]) != 0:
            raise StackError("the claim failed")
        balance = self.deployed.balance(self.result.wallet)
        self.result.claimed = self.result.balance = str(balance)
        self.result.ok = balance == settled * BASE_UNITS_PER_MICRO and balance > 0
        self.note(f"payout: the owner's wallet {self.result.wallet} holds {balance} base units "
                  f"= {balance / 10**18:.6f} tokens its TVs mined")

    def _owner(self, argv: list[str]) -> int:
        """Run an ``edgeproof-owner`` command; its output goes to the demo's notes (stdout
        stays free for ``--json``)."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = owner_main(argv)
        for line in out.getvalue().splitlines():
            self.note(f"  {line}")
        return code

    @staticmethod
    def _settled(stack: Stack, owner: str) -> int:
        balances = stack.get("/v1/balances")
        return sum(int(row["balance_micro"]) for row in balances["current"]
                   if row["owner"] == owner)

    def _wait_entitled(self, stack: Stack, amount: int) -> None:
        assert self.node is not None
        rpc = JsonRpc(self.node.url, timeout_s=wallet.TIMEOUT_S)
        deadline = time.monotonic() + EPOCH_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                self.check()
                try:
                    if wallet.state(stack.gateway_url, rpc, self.result.wallet).entitled >= amount:
                        return
                except EdgeproofError:
                    pass  # no epoch posted yet
                time.sleep(0.3)
        finally:
            rpc.close()
        raise StackError(f"no epoch paid the owner {amount} base units within "
                         f"{EPOCH_TIMEOUT_S:.0f} s")

    def close(self) -> None:
        """Stop the node (its database goes with the demo directory)."""
        if self.node is not None:
            self.node.kill()
            self.node = None
