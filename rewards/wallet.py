"""The owner's wallet: bind it, see what is claimable and claimed, claim, see the balance.

The owner holds two keys: its edgeproof owner key (Ed25519, signs the wallet binding) and
its wallet key (secp256k1, :mod:`rewards.ethkey`, signs claim transactions with
eth-account). Neither leaves the owner's machine. The gateway is asked only for what it
serves to anyone (its latest posted epoch, a proof); every amount is checked against the
chain before anything is sent: the proof must lead to the root the distributor holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests

from osutil.jsonrpc import JsonRpc
from protocol.documents import parse_document, sign_document
from protocol.errors import RejectedByPeer, TransportError, VerificationError
from protocol.keys import Secret, SigningKey, signer_id
from rewards import distributor as abi
from rewards.chain import send_and_wait
from rewards.documents import PayoutEpoch, WalletBinding
from rewards.tree import checked_address, verify_claim

TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 1024 * 1024


def _http(method: str, url: str, body: dict[str, str] | None = None) -> tuple[int, Any]:
    try:
        with requests.request(method, url, json=body, timeout=TIMEOUT_S, stream=True) as answer:
            content = answer.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
            status = answer.status_code
    except requests.RequestException as exc:
        raise TransportError(f"cannot reach {url}: {type(exc).__name__}") from None
    if len(content) > MAX_ANSWER_BYTES:
        raise TransportError(f"{url}: answer larger than {MAX_ANSWER_BYTES} bytes")
    try:
        return status, json.loads(content)
    except ValueError:
        raise TransportError(f"{url}: HTTP {status} without JSON") from None


def bind(gateway: str, owner: SigningKey, address: str, chain_id: int, now_ms: int) -> int:
    """Sign a wallet binding with the owner key and submit it; return its leaf index.

    Raises RejectedByPeer with the gateway's one-line reason if it is refused.
    """
    binding = WalletBinding(signer_id(owner.public_key), bytes.fromhex(address[2:]), chain_id)
    raw = sign_document(binding, owner, now_ms).raw
    status, answer = _http("POST", f"{gateway.rstrip('/')}/v1/wallets", {"document": raw.hex()})
    if status != 201:
        raise RejectedByPeer(f"gateway refused the binding: {_detail(answer)}")
    return int(answer["leaf_index"])


def _detail(answer: object) -> str:
    return str(answer.get("detail") if isinstance(answer, dict) else answer)[:300]


@dataclass(frozen=True)
class WalletState:
    """What the chain says about one address, with the gateway's latest proof for it."""

    address: str
    distributor: str
    token: str
    epoch: int  # the distributor's current epoch
    entitled: int  # cumulative amount in the current root (0: no leaf)
    claimed: int
    balance: int
    proof: tuple[bytes, ...]

    @property
    def claimable(self) -> int:
        return max(0, self.entitled - self.claimed)

    def as_json(self) -> dict[str, object]:
        return {"address": self.address, "distributor": self.distributor, "token": self.token,
                "epoch": self.epoch, "entitled": str(self.entitled),
                "claimed": str(self.claimed), "claimable": str(self.claimable),
                "balance": str(self.balance)}


def state(gateway: str, rpc: JsonRpc, address: str) -> WalletState:
    """Read the address's standing; the gateway's proof is checked against the chain's root.

    Raises TransportError (unreachable), VerificationError (the gateway's proof does not
    lead to the root on chain).
    """
    address = checked_address(address)
    base = gateway.rstrip("/")
    status, latest = _http("GET", f"{base}/v1/payouts/latest")
    if status != 200:
        raise TransportError(f"gateway has no posted payout epoch: {_detail(latest)}")
    epoch = parse_document(bytes.fromhex(str(latest["document"]))).body
    assert isinstance(epoch, PayoutEpoch)
    distributor = checked_address("0x" + epoch.distributor.hex())
    token = checked_address("0x" + rpc.eth_call(distributor, abi.view("token"))[-20:].hex())
    root = rpc.eth_call(distributor, abi.view("merkleRoot"))
    status, proof = _http("GET", f"{base}/v1/payouts/proof/{address}")
    entitled, path = 0, tuple[bytes, ...]()
    if status == 200:
        entitled = int(proof["amount"])
        path = tuple(bytes.fromhex(str(p)[2:]) for p in proof["proof"])
        verify_claim(root, address, entitled, path)
    elif status != 404:
        raise TransportError(f"gateway answered {status}: {_detail(proof)}")
    return WalletState(address, distributor, token,
                       abi.uint(rpc.eth_call(distributor, abi.view("epoch"))), entitled,
                       abi.uint(rpc.eth_call(distributor, abi.view("claimed", address))),
                       abi.uint(rpc.eth_call(token, abi.view("balanceOf", address))), path)


def claim(gateway: str, rpc: JsonRpc, key: Secret, address: str) -> tuple[WalletState, str]:
    """Claim what is claimable for ``address``, signing with ``key``; return the new state
    and the transaction hash. Raises VerificationError when there is nothing to claim."""
    before = state(gateway, rpc, address)
    if before.claimable == 0:
        raise VerificationError(f"nothing to claim for {before.address}: entitled "
                                f"{before.entitled}, already claimed {before.claimed}")
    receipt = send_and_wait(rpc, key, before.distributor,
                            abi.claim(before.address, before.entitled, list(before.proof)),
                            chain_id=rpc.chain_id())
    return state(gateway, rpc, address), str(receipt["transactionHash"])
