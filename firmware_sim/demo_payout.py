"""The demo's last act: the credit the owner's TVs mined lands in the owner's wallet as tokens,
under consent gating (PROTOCOL.md §19.4), the gateway's default.

Before the gateway starts, :meth:`PayoutStory.prepare` starts a private ganache node (its
own database in the demo directory), deploys the reward token and the cumulative Merkle
distributor (:mod:`firmware_sim.solidity`, the pinned solc from ``.tools/``) and returns the
gateway's ``[payout]`` section (the distributor is owned by the gateway's payout key; the
owner's hub named as the validator whose verdicts count, ``quality_validators``).
:meth:`fund` has the company pay tokens into the distributor for a request's terms
(``fund(amount, terms = request id)``). :meth:`reward` is the company's paid offer: it
requests the temperature of some of the owner's devices, funds the distributor for that
request, and the owner consents; only credit those devices earn while the consent is in
force counts, a device left out stays locked. After the devices stopped and a checkpoint
covers their usage, :meth:`claim` does what an owner does: ``edgeproof-owner wallet bind``,
wait for the gateway to post an epoch covering it, recompute that epoch from the log and the
chain the way ``edgeproof-verify payout`` does (and run it), print per device what was paid,
withheld (a trusted validator judged the sensor faulty: ``quality_faulty``) and locked (no
consent in force), ``edgeproof-owner wallet claim``, and read the wallet's token balance.

Every key is made fresh for the run (the wallet key in a 0600 file, never printed).
"""

from __future__ import annotations

import contextlib
import io
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from firmware_sim.chain import ETHER, GanacheNode
from firmware_sim.solidity import Deployment, address_of
from firmware_sim.stack import Stack, StackError
from osutil.jsonrpc import JsonRpc
from owner.cli import main as owner_main
from protocol.checkpoint import Checkpoint
from protocol.contract import Consent, DataRequest, Terms
from protocol.documents import parse_document, sign_document
from protocol.errors import EdgeproofError, TransportError
from protocol.keys import OwnerKey, Secret, SigningKey, save_owner_key, write_secret_file
from protocol.note import NoteVerifier
from rewards import wallet
from rewards.documents import BASE_UNITS_PER_MICRO, PayoutEpoch, owner_name
from rewards.gating import Gated
from verifier.client import DocumentClient
from verifier.gating import funded_at, gated_from_log
from verifier.payout import verify_payout
from verifier.proven import ProvenLog

FUNDING_TOKENS = 1_000  # what the company pays in per request (whole tokens)
EPOCH_TIMEOUT_S = 60.0
REWARD_STREAM, REWARD_FIELD, REWARD_RATE_S = "climate", "Cel", 60
HOUR_MS = 3_600_000
WITHHELD_REASON = "quality_faulty"  # PROTOCOL.md §19.4 rule 5
LOCKED_REASON = "no_consent_in_force"


@dataclass
class DeviceAccount:
    """One device's settled credit in the epoch the owner claims, split three ways
    (micro-credits): paid, withheld (``quality_faulty``), locked (no consent in force)."""

    settled: int = 0
    paid: int = 0
    withheld: int = 0
    consented: bool = False

    @property
    def locked(self) -> int:
        return self.settled - self.paid - self.withheld

    def as_json(self) -> dict[str, Any]:
        return {"settled_micro": self.settled, "paid_micro": self.paid,
                "withheld_micro": self.withheld, "withheld_reason": WITHHELD_REASON
                if self.withheld else None, "locked_micro": self.locked,
                "consented": self.consented}


@dataclass
class PayoutResult:
    """What the act showed (the demo summary's ``payout`` member)."""

    distributor: str = ""
    wallet: str = ""
    funded: str = "0"  # base units, decimal strings (beyond JSON's safe integers)
    request_id: str = ""  # the company's paid request (hex)
    consented: list[str] = field(default_factory=list)  # the devices its consent names
    epoch: int = 0
    distributor_block: int | None = None  # the deployment block the verified epoch states
    settled_micro: int = 0  # the owner's, at the epoch's checkpoint
    paid_micro: int = 0
    withheld_micro: int = 0
    locked_micro: int = 0
    devices: dict[str, DeviceAccount] = field(default_factory=dict)
    verified: bool = False  # edgeproof-verify payout recomputed the epoch and agreed
    claimable: str = "0"
    claimed: str = "0"
    balance: str = "0"
    ok: bool = False
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        return {**vars(self), "devices": {n: a.as_json() for n, a in self.devices.items()}}


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


    def prepare(self, validators: tuple[bytes, ...] = ()) -> str:
        """Start the node, deploy the contracts; return the gateway's ``[payout]`` section
        (consent-gated, the default; ``validators``: whose faulty verdicts withhold credit).

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
                  f"{self.deployed.token} and distributor {self.deployed.distributor} deployed "
                  f"(block {self.deployed.distributor_block}), the distributor owned by the "
                  "gateway's payout key")
        trusted = ", ".join(f'"{v.hex()}"' for v in sorted(validators))
        return (f'[payout]\nrpc_url = "{self.node.url}"\nkey_file = "{key_file}"\n'
                f'chain_id = {self.node.chain_id}\ndistributor = "{self.deployed.distributor}"\n'
                f"distributor_block = {self.deployed.distributor_block}\n"
                "interval_s = 1\n" + (f"quality_validators = [{trusted}]\n" if trusted else ""))

    def fund(self, company: str, request_id: bytes) -> None:
        """The company pays FUNDING_TOKENS into the distributor for its request's terms."""
        assert self.deployed is not None
        amount = FUNDING_TOKENS * 10**18
        self.deployed.give(address_of(self.keys["company"]), amount)
        self.deployed.fund(self.keys["company"], amount, request_id)
        self.result.funded = str(int(self.result.funded) + amount)
        self.note(f"payout: {company} funds the distributor with {FUNDING_TOKENS} tokens for "
                  f"its request (terms = request id {request_id[:6].hex()}..)")

    def reward(self, stack: Stack, company: str, company_key: bytes, signing: SigningKey, *,
               owner: OwnerKey, devices: dict[str, str], left_out: list[str]) -> None:
        """The company's paid request: ``devices`` (name -> device id hex) for an hour;
        it funds the distributor for it and the owner consents. Raises EdgeproofError."""
        now = time.time_ns() // 1_000_000
        ids = tuple(sorted(bytes.fromhex(d) for d in devices.values()))
        terms = Terms(((REWARD_STREAM, (REWARD_FIELD,)),), REWARD_RATE_S, now - 60_000,
                      now + HOUR_MS)
        request = sign_document(DataRequest(company_key, ids, (), terms,
                                            "room temperature, paid per TV hour", 1000),
                                signing, now)
        documents = DocumentClient(stack.gateway_url)
        index, _ = documents.submit(request.raw)
        self.result.request_id = request.id.hex()
        self.result.consented = list(devices)
        self.note(f"payout: {company} offers a reward: it requests the temperature of "
                  f"{', '.join(devices)} for an hour (leaf {index}) and pays for the credit "
                  "they earn while the owner consents")
        self.fund(company, request.id)
        consent = sign_document(Consent(request.id, company_key, ids, terms), owner.signing,
                                time.time_ns() // 1_000_000)
        index, _ = documents.submit(consent.raw)
        self.note(f"payout: the owner consents (leaf {index}); from this leaf on, the "
                  "credit those devices earn counts towards the payout (consent gating)")
        if left_out:
            self.note(f"payout: {', '.join(left_out)}: no consent to a paying company, so "
                      "its credit stays settled but LOCKED (never paid)")

    def claim(self, stack: Stack, owner: OwnerKey, names: dict[str, str],
              settled: dict[str, int]) -> PayoutResult:
        """Bind the owner's wallet, wait for the epoch, show what it pays per device, claim;
        a failure is recorded. ``names``: device id hex -> name; ``settled``: name -> the
        device's settled credit (its agent's receipts)."""
        try:
            self._claim(stack, owner, names, settled)
        except (EdgeproofError, OSError, httpx.HTTPError) as exc:
            self.result.error = f"payout: {exc}"
        return self.result

    def _claim(self, stack: Stack, owner: OwnerKey, names: dict[str, str],
               settled: dict[str, int]) -> None:
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
        out = self._owner(["wallet", "bind", "--key", str(owner_file), *endpoints])
        found = re.search(r"\(log leaf (\d+)\)", out or "")
        if found is None:
            raise StackError("the wallet binding was refused")
        bound_at = int(found[1])
        self.note("payout: waiting for the gateway to post an epoch that covers the binding")
        body = self._wait_epoch(stack, bound_at)
        report = self._verify(stack, body.epoch)
        self._accounts(stack, owner, body, names, settled)
        self.result.verified = report["total_micro"] == self.result.paid_micro
        if not self.result.paid_micro:  # e.g. a run ended before any consented credit
            self.note("payout: no credit was earned under a funded consent: nothing to claim")
            self.result.ok = self.result.verified
            return
        self._claimable(stack)
        self.note("payout: $ edgeproof-owner wallet claim --wallet-key wallet.key ...")
        if self._owner(["wallet", "claim", *endpoints]) is None:
            raise StackError("the claim failed")
        balance = self.deployed.balance(self.result.wallet)
        self.result.claimed = self.result.balance = str(balance)
        expected = self.result.paid_micro * BASE_UNITS_PER_MICRO
        self.result.ok = balance == expected > 0 and self.result.verified
        self.note(f"payout: the owner's wallet {self.result.wallet} now holds "
                  f"{balance / 10**18:.6f} tokens ({balance} base units): the credit its "
                  "devices earned under its consent, nothing for the faulty sensor's "
                  "withheld windows, nothing for the locked devices")

    def _wait_epoch(self, stack: Stack, bound_at: int) -> PayoutEpoch:
        """The latest posted epoch once one covers the binding (so every record before it)."""
        deadline = time.monotonic() + EPOCH_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check()
            answer = httpx.get(f"{stack.gateway_url}/v1/payouts/latest", timeout=10)
            if answer.status_code == 200:
                body = parse_document(bytes.fromhex(answer.json()["document"])).body
                assert isinstance(body, PayoutEpoch)
                if body.checkpoint_size > bound_at:
                    self.result.epoch = body.epoch
                    return body
            time.sleep(0.3)
        raise StackError(f"no epoch covering the wallet binding within {EPOCH_TIMEOUT_S:.0f} s")

    def _accounts(self, stack: Stack, owner: OwnerKey, body: PayoutEpoch,
                  names: dict[str, str], settled: dict[str, int]) -> None:
        """Recompute the epoch from the log and the chain (as a verifier does) and split
        each device's credit into paid, withheld and locked; print it."""
        assert self.node is not None
        if body.funding_block is None:
            raise StackError(f"epoch {body.epoch} is not consent-gated")
        client = DocumentClient(stack.gateway_url)
        note = client.payout_epoch(body.epoch)[2]
        checkpoint = Checkpoint.from_note(note, NoteVerifier.from_text(stack.verifier_key))
        rpc = JsonRpc(self.node.url, timeout_s=wallet.TIMEOUT_S)
        try:
            funded = funded_at(rpc, "0x" + body.distributor.hex(), body.funding_block,
                               body.rate)
        finally:
            rpc.close()
        # The log was scanned by edgeproof-verify payout just before; each leaf read here is
        # still proven included in the epoch's checkpoint.
        gated = gated_from_log(ProvenLog(client, checkpoint, scan=False), funded,
                               trusted=body.validators)
        r = self.result
        r.devices = _per_device(gated, names, settled, set(r.consented))
        r.settled_micro = sum(int(row["balance_micro"]) for row in
                              stack.get("/v1/balances")["current"]
                              if row["owner"] == owner_name(owner.owner_id))
        r.paid_micro = gated.owners.get(owner.owner_id, 0)
        r.withheld_micro = sum(a.withheld for a in r.devices.values())
        r.locked_micro = r.settled_micro - r.paid_micro - r.withheld_micro
        self.note(f"payout: epoch {body.epoch} (checkpoint {body.checkpoint_size}, consent-"
                  f"gated, Funded events up to block {body.funding_block}); per device, in "
                  "micro-credits (1 micro-credit = 10^12 token base units):")
        self.note(f"  {'device':<9} {'settled':>8} {'paid':>8} {'withheld':>9} "
                  f"{'locked':>8}  why")
        for name, a in r.devices.items():
            self.note(f"  {name:<9} {a.settled:>8} {a.paid:>8} {a.withheld:>9} {a.locked:>8}"
                      f"  {_why(a)}")
        self.note(f"  {'owner':<9} {r.settled_micro:>8} {r.paid_micro:>8} "
                  f"{r.withheld_micro:>9} {r.locked_micro:>8}")

    def _verify(self, stack: Stack, epoch: int) -> dict[str, Any]:
        """``edgeproof-verify payout``: the epoch recomputed from the log and the chain."""
        assert self.node is not None
        rpc = JsonRpc(self.node.url, timeout_s=wallet.TIMEOUT_S)
        deadline = time.monotonic() + EPOCH_TIMEOUT_S
        try:
            while True:
                self.check()
                try:
                    report = verify_payout(DocumentClient(stack.gateway_url),
                                           stack.verifier_key, rpc, epoch)
                    break
                except TransportError:  # the epoch's leaf is not checkpointed yet
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
        finally:
            rpc.close()
        block = report["distributor_block"]
        self.result.distributor_block = block if isinstance(block, int) else None
        self.note(f"payout: $ edgeproof-verify payout: epoch {report['epoch']} recomputed from "
                  f"the log and the chain (Funded events read from the deployment block "
                  f"{block}, which the chain bears out), root {str(report['root'])[:18]}.. "
                  f"matches the one on chain; it pays {report['total_micro']} micro-credits, "
                  f"{report['locked_micro']} stay locked or withheld")
        return report

    def _claimable(self, stack: Stack) -> None:
        """What each owner in the epoch's tree can claim (the demo has one owner)."""
        assert self.node is not None
        tree = httpx.get(f"{stack.gateway_url}/v1/payouts/epochs/{self.result.epoch}/tree",
                         timeout=10).json()
        for value in tree["values"]:
            address, amount = value["value"][0], int(value["value"][1])
            whose = "the owner's wallet" if address == self.result.wallet else "a wallet"
            self.note(f"payout: claimable by {whose} {address}: {amount / 10**18:.6f} tokens")
        rpc = JsonRpc(self.node.url, timeout_s=wallet.TIMEOUT_S)
        try:
            self.result.claimable = str(wallet.state(stack.gateway_url, rpc,
                                                     self.result.wallet).claimable)
        finally:
            rpc.close()

    def _owner(self, argv: list[str]) -> str | None:
        """Run an ``edgeproof-owner`` command; return its output (None: it failed). The
        output goes to the demo's notes (stdout stays free for ``--json``)."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = owner_main(argv)
        for line in out.getvalue().splitlines():
            self.note(f"  {line}")
        return out.getvalue() if code == 0 else None

    def close(self) -> None:
        """Stop the node (its database goes with the demo directory)."""
        if self.node is not None:
            self.node.kill()
            self.node = None


def _per_device(gated: Gated, names: dict[str, str], settled: dict[str, int],
                consented: set[str]) -> dict[str, DeviceAccount]:
    """Each device's account: paid and withheld from the recomputed epoch; settled from the
    log where a consent named the device (its usage records were read), else the agent's."""
    out: dict[str, DeviceAccount] = {}
    for device_hex, name in names.items():
        device = bytes.fromhex(device_hex)
        out[name] = DeviceAccount(
            settled=gated.device_settled.get(device, settled.get(name, 0)),
            paid=gated.device_paid.get(device, 0),
            withheld=gated.device_withheld.get(device, 0),
            consented=name in consented)
    return out


def _why(account: DeviceAccount) -> str:
    parts = []
    if account.paid:
        parts.append("paid: earned under the funded consent")
    if account.withheld:
        parts.append(f"withheld: {WITHHELD_REASON} (logged after the validator judged the "
                     "sensor FAULTY)")
    if account.locked:
        parts.append(f"locked: {LOCKED_REASON} (" + (
            "before the consent or after its revocation" if account.consented
            or account.paid else "no consent to a paying company") + ")")
    return "; ".join(parts) or "earned nothing"
