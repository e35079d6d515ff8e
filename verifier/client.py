"""Fetching what a verifier needs: a gateway's public API and an Ethereum JSON-RPC node.

The JSON-RPC client itself is :class:`osutil.jsonrpc.JsonRpc` (shared with the gateway's
anchor); this module only reads the anchoring transaction out of its answers.

Everything fetched here is untrusted input: responses are size-capped, parsed strictly,
and only ever fed to :mod:`protocol` verification, which fails closed. Network and HTTP
failures become :class:`~protocol.errors.TransportError`; a response that does not have
the expected shape becomes :class:`~protocol.errors.MalformedRecord`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from osutil.jsonrpc import JsonRpc, quantity
from protocol.errors import (
    ConfigError,
    EdgeproofError,
    MalformedRecord,
    RejectedByPeer,
    TransportError,
)
from protocol.jsontext import parse_json

MAX_RESPONSE_BYTES = 4 * 1024 * 1024
TIMEOUT_S = 10.0
# Devices asked for per page of GET /v1/owners/{owner_key}/devices (the gateway's cap).
OWNER_DEVICES_PAGE = 1000
# Wallet bindings asked for per page of GET /v1/wallets (the gateway's cap).
WALLETS_PAGE = 1000


@dataclass(frozen=True)
class _Fetched:
    """A size-capped HTTP 200 answer, read in full (the body is bytes from the network)."""

    url: str
    body: bytes
    encoding: str

    @property
    def text(self) -> str:
        try:
            return self.body.decode(self.encoding, "replace")
        except LookupError:  # a charset Python does not know: read it as UTF-8, as requests does
            return self.body.decode("utf-8", "replace")


def _read_capped(response: requests.Response, cap: int) -> bytes:
    """At most ``cap + 1`` bytes of the decoded body: enough to tell that it is over ``cap``."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            break
    return b"".join(chunks)[: cap + 1]


def _get(session: requests.Session, url: str, **params: int | str) -> _Fetched:
    try:
        with session.get(url, params=params, timeout=TIMEOUT_S, stream=True) as response:
            body = _read_capped(response, MAX_RESPONSE_BYTES)
    except requests.RequestException as exc:
        raise TransportError(f"cannot reach {url}: {exc.__class__.__name__}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise MalformedRecord("too_large", f"response from {url} over {MAX_RESPONSE_BYTES} bytes")
    if response.status_code != 200:
        detail = body[:200].decode("utf-8", "replace").strip()
        raise TransportError(f"{url}: HTTP {response.status_code} {detail}")
    encoding = requests.utils.get_encoding_from_headers(response.headers) or "utf-8"
    return _Fetched(response.url, body, encoding)


def _post(session: requests.Session, url: str, body: bytes) -> tuple[int, Any]:
    """POST ``body``; return (status, parsed JSON answer). TransportError if unreachable."""
    try:
        with session.post(url, data=body, timeout=TIMEOUT_S, stream=True,
                          headers={"Content-Type": "application/cose"}) as response:
            answer = _read_capped(response, MAX_RESPONSE_BYTES)
            status = response.status_code
    except requests.RequestException as exc:
        raise TransportError(f"cannot reach {url}: {exc.__class__.__name__}") from None
    try:
        return status, parse_json(answer)
    except ValueError:  # also no UTF encoding, or nested too deep (parse_json)
        raise MalformedRecord("bad_response", f"{url}: HTTP {status}, not JSON") from None


def _json(fetched: _Fetched) -> Any:
    try:
        return parse_json(fetched.body)
    except ValueError:  # also UnicodeDecodeError, and nesting too deep (parse_json)
        raise MalformedRecord("bad_response", f"{fetched.url}: not JSON") from None


def _hex(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedRecord("bad_response", f"{what} is not hex text")
    try:
        return bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise MalformedRecord("bad_response", f"{what} is not hex") from None


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedRecord("bad_response", f"{what} is not a non-negative integer")
    return value


@dataclass(frozen=True)
class LoggedRecord:
    """A record as the gateway serves it."""

    index: int
    device_id: bytes
    seq: int
    stream: str
    record: bytes


def check_url(url: str, what: str = "--gateway") -> str:
    """An http(s) URL with a host, as given; ConfigError (bad usage, exit 2) otherwise."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and \
            (parts.port is None or parts.port > 0)
    except ValueError:  # an unbalanced [ in the host, a port that is not a number
        ok = False
    if not ok:
        raise ConfigError(f"{what} must be an http(s)://host[:port] URL, not {url!r}")
    return url


class GatewayClient:
    """The public, read-only part of a gateway's HTTP API."""

    def __init__(self, base_url: str, session: requests.Session | None = None) -> None:
        check_url(base_url)
        self.base = base_url.rstrip("/")
        self.session = session or requests.Session()

    def verifier_key(self) -> str:
        return _get(self.session, f"{self.base}/v1/verifier-key").text.strip()

    def checkpoint(self) -> str:
        return _get(self.session, f"{self.base}/v1/checkpoint").text

    def payout_epoch(self, epoch: int | None) -> tuple[bytes, int | None, str, bytes]:
        """An epoch's signed document, its leaf index, the checkpoint note it was computed at
        and that checkpoint's balances table (``epoch`` None: the latest posted)."""
        path = "latest" if epoch is None else f"epochs/{epoch}"
        data = _json(_get(self.session, f"{self.base}/v1/payouts/{path}"))
        if not isinstance(data, dict) or not isinstance(data.get("checkpoint_note"), str):
            raise MalformedRecord("bad_response", "payout epoch answer is not an epoch")
        leaf = data.get("leaf_index")
        return (_hex(data.get("document"), "epoch document"),
                None if leaf is None else _int(leaf, "leaf index"), data["checkpoint_note"],
                _hex(data.get("balances"), "balances table"))

    def wallet_bindings(self) -> list[tuple[int, bytes]]:
        """(leaf index, signed bytes) of every wallet binding the gateway logged, every page
        (in log order: a page that does not move forward is a bad answer, not a loop)."""
        found: list[tuple[int, bytes]] = []
        after = -1
        while True:
            data = _json(_get(self.session, f"{self.base}/v1/wallets", after=after,
                              limit=WALLETS_PAGE))
            if not isinstance(data, list) or not all(isinstance(w, dict) for w in data):
                raise MalformedRecord("bad_response", "wallet list is not a list of objects")
            page = [(_int(w.get("leaf_index"), "leaf index"), _hex(w.get("document"),
                                                                   "binding")) for w in data]
            if any(index <= last for index, last in zip(
                    [i for i, _ in page], [after] + [i for i, _ in page], strict=False)):
                raise MalformedRecord("bad_response", "wallet bindings out of log order")
            found += page
            if len(page) < WALLETS_PAGE:
                return found
            after = page[-1][0]

    def leaf(self, index: int) -> LoggedRecord:
        return _logged(_json(_get(self.session, f"{self.base}/v1/leaves/{index}")))

    def leaf_range(self, start: int, limit: int = 1000) -> list[bytes]:
        """The signed bytes of the leaves ``start, start + 1, ...`` the gateway holds (at
        most ``limit``; fewer at the end of the log), each checked to be at its index."""
        data = _json(_get(self.session, f"{self.base}/v1/leaves", start=start, limit=limit))
        if not isinstance(data, list) or len(data) > limit:
            raise MalformedRecord("bad_response", "leaves: no list, or too long")
        out = []
        for offset, item in enumerate(data):
            if not isinstance(item, dict) or item.get("index") != start + offset:
                raise MalformedRecord("bad_response", f"leaves: leaf {start + offset} missing")
            out.append(_hex(item.get("record"), "record"))
        return out

    def device_records(self, device_id: bytes, after_seq: int = -1,
                       limit: int = 1000) -> list[LoggedRecord]:
        data = _json(_get(self.session, f"{self.base}/v1/devices/{device_id.hex()}/records",
                          after_seq=after_seq, limit=limit))
        records = data.get("records") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise MalformedRecord("bad_response", "device records: no list")
        return [_logged(r) for r in records]

    def all_device_records(self, device_id: bytes) -> list[LoggedRecord]:
        """Every logged record of a device, in sequence order (paged)."""
        out: list[LoggedRecord] = []
        after = -1
        while True:
            page = self.device_records(device_id, after)
            out += page
            if len(page) < 1000:
                return out
            after = page[-1].seq

    def device_keys(self, device_id: bytes) -> list[tuple[int, bytes]]:
        """The device's keys as ``(from_seq, public key)``, oldest first."""
        data = _json(_get(self.session, f"{self.base}/v1/devices/{device_id.hex()}/keys"))
        keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(keys, list) or not keys:
            raise MalformedRecord("bad_response", "device keys: no list, or an empty one")
        out = []
        for k in keys:
            if not isinstance(k, dict):
                raise MalformedRecord("bad_response", "device keys: an entry is not an object")
            key = _hex(k.get("public_key"), "public_key")
            if len(key) != 32:
                raise MalformedRecord("bad_response", f"device keys: a public key of "
                                      f"{len(key)} bytes, not 32")
            out.append((_int(k.get("from_seq"), "from_seq"), key))
        return out

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        data = _json(_get(self.session, f"{self.base}/v1/proofs/inclusion", index=index,
                          tree_size=tree_size))
        proof = data.get("proof") if isinstance(data, dict) else None
        if not isinstance(proof, list) or len(proof) > 64:
            raise MalformedRecord("bad_response", "inclusion proof: no list")
        return [_hex(node, "proof node") for node in proof]

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        data = _json(_get(self.session, f"{self.base}/v1/proofs/consistency",
                          old_size=old_size, new_size=new_size))
        proof = data.get("proof") if isinstance(data, dict) else None
        if not isinstance(proof, list) or len(proof) > 128:
            raise MalformedRecord("bad_response", "consistency proof: no list")
        return [_hex(h, "proof node") for h in proof]

    def anchor(self, tree_size: int | None = None) -> dict[str, Any] | None:
        """The anchor of the checkpoint of ``tree_size`` (default: the latest anchored one).

        Returns None when the gateway has no such anchor.
        """
        params = {} if tree_size is None else {"size": tree_size}
        try:
            data = _json(_get(self.session, f"{self.base}/v1/anchors", **params))
        except TransportError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise
        return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class LoggedDocument:
    """A signed document as the gateway lists it (only ``index`` and ``raw`` are used for
    anything that matters; the raw bytes are verified by the caller)."""

    index: int
    raw: bytes
    received_ms: int


class DocumentRefusedByGateway(RejectedByPeer):
    """The gateway refused a submitted document for good; ``reason`` is its reason code.

    A refusal, not a transport failure: the gateway checked the document and it broke a
    rule (docs/PROTOCOL.md §16.3), so sending it again unchanged cannot help. The message
    always carries the reason code.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail if not reason or reason in detail else f"{reason}: {detail}")
        self.reason = reason


class NoOwnerKey(EdgeproofError):
    """The gateway registered no owner key for the device: there is nothing to check its
    consents against, so an audit cannot be made (could not check, not a failed check)."""


class DocumentClient(GatewayClient):
    """The gateway's document endpoints (PROTOCOL.md §16): list, read, submit."""

    def documents(self, doc_type: str | None = None, after: int = -1,
                  limit: int = 1000) -> list[LoggedDocument]:
        params: dict[str, int | str] = {"after": after, "limit": limit}
        if doc_type is not None:
            params["type"] = doc_type
        return _documents(_json(_get(self.session, f"{self.base}/v1/documents", **params)))

    def all_documents(self, doc_type: str | None = None) -> list[LoggedDocument]:
        """Every logged document (of one type), in log order (paged)."""
        out: list[LoggedDocument] = []
        while True:
            page = self.documents(doc_type, out[-1].index if out else -1)
            out += page
            if len(page) < 1000:
                return out

    def device_documents(self, device_id: bytes) -> list[LoggedDocument]:
        """Every consent and revocation concerning a device, in log order (paged)."""
        out: list[LoggedDocument] = []
        while True:
            start = out[-1].index + 1 if out else 0
            page = _documents(_json(_get(
                self.session, f"{self.base}/v1/devices/{device_id.hex()}/documents",
                from_index=start, limit=1000)))
            out += page
            if len(page) < 1000:
                return out

    def document(self, doc_id: bytes) -> LoggedDocument:
        """One logged document by id (TransportError if the gateway has none)."""
        found = _documents([_json(_get(self.session, f"{self.base}/v1/documents/{doc_id.hex()}"))])
        return found[0]

    def owner_key(self, device_id: bytes) -> bytes:
        """The owner key the gateway registered for a device.

        Raises NoOwnerKey if the gateway has none for it (``owner_key`` null or absent: the
        device was enrolled without one), MalformedRecord if the answer is not a 32-byte key.
        """
        data = _json(_get(self.session, f"{self.base}/v1/devices/{device_id.hex()}/keys"))
        if not isinstance(data, dict):
            raise MalformedRecord("bad_response", "device keys: not an object")
        if data.get("owner_key") is None:
            raise NoOwnerKey(f"device {device_id.hex()} has no owner key at the gateway "
                             "(enrolled without --owner-key): an audit needs the owner key "
                             "to check consents against")
        key = _hex(data["owner_key"], "owner_key")
        if len(key) != 32:
            raise MalformedRecord("bad_response", f"owner_key of {len(key)} bytes, not 32")
        return key

    def owner_devices(self, owner_key: bytes) -> list[tuple[bytes, str, str]]:
        """(device id, name, status) of the devices pinned to an owner key, every page.

        The gateway answers a page at a time by name; a device already seen (a gateway that
        ignores ``after`` repeats its list) ends the walk rather than looping.
        """
        url = f"{self.base}/v1/owners/{owner_key.hex()}/devices"
        found: dict[bytes, tuple[bytes, str, str]] = {}
        after = ""
        while True:
            data = _json(_get(self.session, url, after=after, limit=OWNER_DEVICES_PAGE))
            if not isinstance(data, list):
                raise MalformedRecord("bad_response", "owner devices: no list")
            page = [(_hex(d.get("device_id"), "device id"), str(d.get("name")),
                     str(d.get("status"))) for d in data if isinstance(d, dict)]
            new = [row for row in page if row[0] not in found]
            found.update((row[0], row) for row in new)
            if len(page) < OWNER_DEVICES_PAGE or len(new) < len(page):
                return list(found.values())
            after = page[-1][1]

    def submit(self, raw: bytes) -> tuple[int, bool]:
        """Submit a signed document; return (leaf index, already logged).

        Raises DocumentRefusedByGateway with the gateway's reason code if it refused.
        """
        status, answer = _post(self.session, f"{self.base}/v1/documents", raw)
        if not isinstance(answer, dict):
            raise MalformedRecord("bad_response", "submit: not an object")
        if status in (200, 201):
            return _int(answer.get("index"), "index"), bool(answer.get("duplicate"))
        reason = str(answer.get("reason") or "")
        raise DocumentRefusedByGateway(reason, f"gateway refused it: {answer.get('detail')}")


def _documents(data: object) -> list[LoggedDocument]:
    if not isinstance(data, list):
        raise MalformedRecord("bad_response", "documents: no list")
    out = []
    for d in data:
        if not isinstance(d, dict):
            raise MalformedRecord("bad_response", "document: not an object")
        out.append(LoggedDocument(_int(d.get("index"), "index"),
                                  _hex(d.get("document"), "document"),
                                  _int(d.get("received_ms"), "received_ms")))
    return out


def _logged(data: object) -> LoggedRecord:
    if not isinstance(data, dict):
        raise MalformedRecord("bad_response", "record: not an object")
    stream = data.get("stream")
    if not isinstance(stream, str):
        raise MalformedRecord("bad_response", "record: no stream")
    if stream.startswith("document/"):  # PROTOCOL.md §8: documents are leaves too
        raise MalformedRecord("not_a_record", f"leaf {data.get('index')} is a signed "
                              f"{stream.removeprefix('document/')}, not a record: check it "
                              "with `edgeproof-verify document` or `audit`")
    return LoggedRecord(_int(data.get("index"), "index"), _hex(data.get("device_id"), "device id"),
                        _int(data.get("seq"), "seq"), stream, _hex(data.get("record"), "record"))


def anchoring_transaction(rpc: JsonRpc, tx_hash: str) -> tuple[bytes, int, int]:
    """Return (input data, block number, receipt status) of a mined transaction.

    Raises TransportError if the node is unreachable, refuses, or does not know the
    transaction as mined; MalformedRecord if its answer lacks the fields a verifier needs.
    """
    tx = rpc.transaction(tx_hash)
    receipt = rpc.receipt(tx_hash)
    if tx is None or receipt is None:
        raise TransportError(f"transaction {tx_hash} not found or not mined")
    try:
        block = quantity(receipt.get("blockNumber"), "block number")
        status = quantity(receipt.get("status"), "receipt status")
    except TransportError as exc:
        raise MalformedRecord("bad_response", str(exc)) from None
    return _hex(tx.get("input"), "input"), block, status
