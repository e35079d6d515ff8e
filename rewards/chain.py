"""Send one contract transaction and wait for its receipt: the owner tool's claims, deployments.

A legacy (type 0, EIP-155) transaction signed locally with eth-account; the node never
holds the key. The gas limit is the node's estimate plus a fifth (an estimate that reverts
raises :class:`RpcError` with ``reverted`` set: nothing is sent). The gateway's root
posting has its own persistent, retrying sender (:mod:`gateway.payout`); this one is
for a person at a terminal, who sees the error and decides.
"""

from __future__ import annotations

import time
from typing import Any

from osutil.jsonrpc import JsonRpc, quantity
from protocol.errors import RejectedByPeer, TransportError
from protocol.keys import Secret
from rewards.ethkey import address_of, sign_transaction


class TransactionReverted(RejectedByPeer):
    """The transaction was mined but reverted (receipt status 0)."""


def send_and_wait(rpc: JsonRpc, key: Secret, to: str | None, data: bytes, *, chain_id: int,
                  timeout_s: float = 60.0, poll_s: float = 0.2) -> dict[str, Any]:
    """Sign, send and wait for ``data`` to ``to`` (None: a deployment); return the receipt.

    Raises RpcError (refused, or would revert), TransportError (node unreachable, or no
    receipt within ``timeout_s``) or TransactionReverted (mined with status 0).
    """
    sender = address_of(key.value)
    call: dict[str, Any] = {"from": sender, "value": "0x0", "data": "0x" + data.hex()}
    if to is not None:
        call["to"] = to
    estimate = quantity(rpc.call("eth_estimateGas", call), "gas estimate")
    tx: dict[str, Any] = {"nonce": rpc.nonce(sender, "pending"), "gasPrice": rpc.gas_price(),
                          "gas": estimate + estimate // 5, "value": 0, "data": data,
                          "chainId": chain_id}
    if to is not None:
        tx["to"] = to
    tx_hash = rpc.send_raw(sign_transaction(tx, key.value).raw)
    deadline = time.monotonic() + timeout_s
    while True:
        receipt = rpc.receipt(tx_hash)
        if receipt is not None and receipt.get("blockNumber") is not None:
            break
        if time.monotonic() > deadline:
            raise TransportError(f"transaction {tx_hash} not mined within {timeout_s:g} s")
        time.sleep(poll_s)
    if quantity(receipt.get("status"), "receipt status") != 1:
        raise TransactionReverted(f"transaction {tx_hash} reverted on chain")
    return receipt
