"""A small Ethereum JSON-RPC client (``requests``): the gateway's anchor and the verifier.

The gateway's ``ethereum`` anchor sends and watches transactions with it; the verifier
reads an anchoring transaction back with it. Every call has a time-out, so a slow node
can never hold a caller for long, and every answer is read with a size cap before it is
parsed (a node is untrusted input to a verifier). Errors are mapped onto the one
exception tree:

- the node cannot be reached, times out, answers with an HTTP error, with more than
  :data:`MAX_ANSWER_BYTES`, or with something that is not a JSON-RPC answer:
  :class:`~protocol.errors.TransportError` (retry later);
- the node answers with a JSON-RPC error object: :class:`RpcError` (it refused this call:
  a transaction that would revert, a nonce already used, insufficient funds, ...).

Quantities are hex strings on the wire (Ethereum JSON-RPC, "hex value encoding").
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3

from protocol.errors import RejectedByPeer, TransportError
from protocol.jsontext import parse_json

DEFAULT_TIMEOUT_S = 5.0
MAX_ANSWER_BYTES = 4 * 1024 * 1024


class RpcError(RejectedByPeer):
    """The node answered a call with a JSON-RPC error object."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: node error {code}: {message}")
        self.method, self.code, self.message = method, code, message

    @property
    def reverted(self) -> bool:
        """Whether the node says the call's execution reverted (EVM REVERT)."""
        return "revert" in self.message.lower()


def quantity(value: object, what: str) -> int:
    """Decode a JSON-RPC hex quantity ("0x1a"); raise TransportError if it is not one."""
    if not isinstance(value, str) or not value.startswith("0x"):
        raise TransportError(f"node answered a malformed {what}: {value!r}")
    try:
        return int(value, 16)
    except ValueError:
        raise TransportError(f"node answered a malformed {what}: {value!r}") from None


def node_address(url: str) -> str:
    """``scheme://host[:port]`` of a node URL, for logs, errors and status pages: hosted
    nodes carry their API key in the path (``.../v3/KEY``) or the user info, and neither
    may be printed."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the node (a URL that does not parse)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}"


class JsonRpc:
    """One node's JSON-RPC endpoint."""

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 session: requests.Session | None = None) -> None:
        """Talk to the node at ``url`` (nothing is sent until the first call)."""
        self.url = url
        self._timeout_s = timeout_s
        self._session = session or requests.Session()
        self._next_id = 0

    def call(self, method: str, *params: object) -> Any:
        """Call ``method``; return its ``result``. Raise TransportError or RpcError."""
        self._next_id += 1
        body = {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": list(params)}
        try:
            with self._session.post(self.url, json=body, timeout=self._timeout_s,
                                    stream=True) as response:
                status = response.status_code
                content = response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
        except (requests.RequestException, OSError, urllib3.exceptions.HTTPError) as exc:
            raise TransportError(f"{method}: node unreachable at {node_address(self.url)}: "
                                 f"{type(exc).__name__}") from None
        if len(content) > MAX_ANSWER_BYTES:
            raise TransportError(f"{method}: node answer larger than {MAX_ANSWER_BYTES} bytes")
        try:
            answer = parse_json(content)  # nesting bounded: the node is not trusted
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise TransportError(f"{method}: node answered HTTP {status} "
                                 "without a JSON-RPC object")
        error = answer.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise TransportError(f"{method}: node answered a malformed error")
            code = error.get("code")
            raise RpcError(method, code if isinstance(code, int) else 0,
                           str(error.get("message", ""))[:300])
        if "result" not in answer:
            raise TransportError(f"{method}: node answer has neither result nor error")
        return answer["result"]

    # --- the calls the anchor and the verifier make ---------------------------------------

    def chain_id(self) -> int:
        """eth_chainId (EIP-695)."""
        return quantity(self.call("eth_chainId"), "chain id")

    def block_number(self) -> int:
        """eth_blockNumber: the head block."""
        return quantity(self.call("eth_blockNumber"), "block number")

    def block_hash(self, number: int) -> str:
        """The hash of block ``number`` (eth_getBlockByNumber); TransportError if none."""
        block = self.call("eth_getBlockByNumber", hex(number), False)
        found = block.get("hash") if isinstance(block, dict) else None
        if not isinstance(found, str) or len(found) != 66:
            raise TransportError(f"eth_getBlockByNumber: no block {number}")
        return found.lower()

    def block_transactions(self, number: int) -> list[dict[str, Any]]:
        """The transactions of block ``number``, whole (eth_getBlockByNumber with full
        transaction objects); TransportError if the node has no such block."""
        block = self.call("eth_getBlockByNumber", hex(number), True)
        found = block.get("transactions") if isinstance(block, dict) else None
        if not isinstance(found, list) or not all(isinstance(t, dict) for t in found):
            raise TransportError(f"eth_getBlockByNumber: no block {number}")
        return found

    def nonce(self, address: str, block: str) -> int:
        """eth_getTransactionCount at ``block`` ("latest" = mined, "pending")."""
        return quantity(self.call("eth_getTransactionCount", address, block), "nonce")

    def gas_price(self) -> int:
        """eth_gasPrice in wei (legacy, type-0 transactions)."""
        return quantity(self.call("eth_gasPrice"), "gas price")

    def estimate_gas(self, sender: str, to: str, data: bytes) -> int:
        """eth_estimateGas for a call; RpcError with ``reverted`` if it would revert."""
        call = {"from": sender, "to": to, "value": "0x0", "data": "0x" + data.hex()}
        return quantity(self.call("eth_estimateGas", call), "gas estimate")

    def send_raw(self, raw: bytes) -> str:
        """eth_sendRawTransaction; return the transaction hash the node reports."""
        result = self.call("eth_sendRawTransaction", "0x" + raw.hex())
        if not isinstance(result, str):
            raise TransportError("eth_sendRawTransaction: node answered no transaction hash")
        return result.lower()

    def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        """eth_getTransactionReceipt: None while the transaction is not mined."""
        return self._object("eth_getTransactionReceipt", tx_hash)

    def transaction(self, tx_hash: str) -> dict[str, Any] | None:
        """eth_getTransactionByHash: None if the node does not know the transaction."""
        return self._object("eth_getTransactionByHash", tx_hash)

    def eth_call(self, to: str, data: bytes, block: str = "latest") -> bytes:
        """eth_call: run a read-only call; return its answer bytes (RpcError if it reverts)."""
        result = self.call("eth_call", {"to": to, "data": "0x" + data.hex()}, block)
        if not isinstance(result, str) or not result.startswith("0x"):
            raise TransportError("eth_call: node answered no hex data")
        try:
            return bytes.fromhex(result[2:])
        except ValueError:
            raise TransportError("eth_call: node answered malformed hex data") from None

    def logs(self, address: str, topic0: str, from_block: int,
             to_block: int) -> list[dict[str, Any]]:
        """eth_getLogs of one contract and event topic over a block range (inclusive)."""
        result = self.call("eth_getLogs", {"address": address, "topics": [topic0],
                                           "fromBlock": hex(from_block),
                                           "toBlock": hex(to_block)})
        if not isinstance(result, list) or not all(isinstance(e, dict) for e in result):
            raise TransportError("eth_getLogs: node answered no list of log objects")
        return result

    def _object(self, method: str, tx_hash: str) -> dict[str, Any] | None:
        result = self.call(method, tx_hash)
        if result is not None and not isinstance(result, dict):
            raise TransportError(f"{method}: node answered a malformed object")
        return result

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()
