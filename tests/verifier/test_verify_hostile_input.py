"""edgeproof-verify on hostile or mistyped input: every case ends in ONE line on stderr and
the documented exit code (docs/CLI.md), never a traceback.

1 means "does not verify" (a forged or malformed bundle, a gateway answer of the wrong
shape, a document the gateway refused); 2 means "could not check" (bad usage such as a
mistyped --gateway or --gateway-key, nothing to check against). A fake gateway serves
exactly the answers each test names.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from protocol import merkle
from protocol.bundle import ProofBundle
from protocol.checkpoint import Checkpoint
from protocol.errors import MalformedRecord, RejectedByPeer
from protocol.keys import (
    RecipientKey,
    Secret,
    SigningKey,
    device_id_for,
    save_recipient_key,
    save_signing_key,
)
from protocol.note import NoteSigner
from tests.test_bundle import cpu_log
from verifier.cli import main as verify
from verifier.client import DocumentClient, DocumentRefusedByGateway, GatewayClient, NoOwnerKey

Capture = pytest.CaptureFixture[str]
GATEWAY = NoteSigner("gateway.test/log", bytes(range(32)))
KEY = GATEWAY.verifier_text()
DEVICE = SigningKey(Secret(bytes(range(1, 33))))
DEVICE_ID = device_id_for(DEVICE.public_key)
SIZE = 7
LEAF = 3
DEEP = "[" * 100_000 + "]" * 100_000


def _log() -> tuple[list[bytes], str]:
    records, leaves = cpu_log(DEVICE, SIZE)
    return records, Checkpoint(GATEWAY.name, SIZE, merkle.root(leaves)).sign(GATEWAY)


RECORDS, NOTE = _log()


@dataclass
class FakeGateway:
    """Answers GET and POST by path (the query is ignored): (status, body)."""

    base: str
    routes: dict[str, tuple[int, bytes]] = field(default_factory=dict)

    def answer(self, path: str, body: object, status: int = 200) -> None:
        raw = body if isinstance(body, bytes) else (
            body.encode() if isinstance(body, str) else json.dumps(body).encode())
        self.routes[path] = (status, raw)

    def serve_log(self, keys: object) -> None:
        """An honest log of one device, whose /keys answer is ``keys``."""
        leaves = [merkle.leaf_hash(r) for r in RECORDS]
        self.answer(f"/v1/leaves/{LEAF}", {
            "index": LEAF, "device_id": DEVICE_ID.hex(), "seq": LEAF, "stream": "cpu",
            "record": RECORDS[LEAF].hex()})
        self.answer(f"/v1/devices/{DEVICE_ID.hex()}/keys", keys)
        self.answer("/v1/checkpoint", NOTE)
        self.answer("/v1/proofs/inclusion", {
            "proof": [n.hex() for n in merkle.inclusion_proof(leaves, LEAF)]})
        self.answer("/v1/documents", [])


def _handler(routes: dict[str, tuple[int, bytes]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            status, body = routes.get(urlsplit(self.path).path, (404, b'{"detail":"none"}'))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _reply

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    routes: dict[str, tuple[int, bytes]] = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(routes))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeGateway(f"http://127.0.0.1:{server.server_address[1]}", routes)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _one_line(capsys: Capture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _record(gateway: FakeGateway) -> list[str]:
    return ["record", "--gateway", gateway.base, "--leaf", str(LEAF), "--gateway-key", KEY]


HONEST_KEYS = {"keys": [{"from_seq": 0, "public_key": DEVICE.public_key.hex()}],
               "owner_key": None}


def test_fake_gateway_serving_an_honest_log_verifies(gateway: FakeGateway) -> None:
    gateway.serve_log(HONEST_KEYS)
    assert verify(_record(gateway)) == 0


# --- defect 1: a key of the wrong length, in a bundle or a gateway answer ----------------


def test_bundle_with_a_31_byte_device_key_fails_one_line_exit_1_not_a_value_error(
        tmp_path: Path, capsys: Capture) -> None:
    leaves = [merkle.leaf_hash(r) for r in RECORDS]
    bundle = ProofBundle(RECORDS[LEAF], DEVICE.public_key, LEAF, SIZE,
                         tuple(merkle.inclusion_proof(leaves, LEAF)), NOTE, KEY)
    data = json.loads(bundle.to_json())
    path = tmp_path / "short.json"
    path.write_text(json.dumps({**data, "device_public_key": "ab" * 31}))
    assert verify(["bundle", str(path), "--gateway-key", KEY]) == 1
    assert _one_line(capsys).startswith(
        "edgeproof-verify: FAILED: bad_bundle: device_public_key must be 32 bytes")
    path.write_text(bundle.to_json())  # the same bundle, honest: passes
    assert verify(["bundle", str(path), "--gateway-key", KEY]) == 0


@pytest.mark.parametrize("public_key", ["00", "ab" * 31, "ab" * 33])
def test_gateway_keys_answer_with_a_short_key_fails_one_line_exit_1_not_a_value_error(
        gateway: FakeGateway, capsys: Capture, public_key: str) -> None:
    gateway.serve_log({"keys": [{"from_seq": 0, "public_key": public_key}]})
    assert verify(_record(gateway)) == 1
    assert _one_line(capsys).startswith("edgeproof-verify: FAILED: bad_response: device keys")


# --- defect 2: /keys entries that are not objects, or none -------------------------------


@pytest.mark.parametrize("keys", [
    {"keys": [1, 2]}, {"keys": []}, {"keys": [{"from_seq": 0, "public_key": "ab" * 32}, 3]},
])
def test_gateway_keys_answer_with_non_object_entries_is_bad_response_not_an_index_error(
        gateway: FakeGateway, capsys: Capture, keys: object) -> None:
    gateway.serve_log(keys)
    with pytest.raises(MalformedRecord, match="bad_response"):
        GatewayClient(gateway.base).device_keys(DEVICE_ID)
    assert verify(_record(gateway)) == 1
    assert _one_line(capsys).startswith("edgeproof-verify: FAILED: bad_response: device keys")


# --- defect 3: JSON nested deep enough to exhaust the parser -----------------------------


def test_deeply_nested_json_bundle_or_audit_bundle_fails_one_line_not_a_recursion_error(
        tmp_path: Path, capsys: Capture) -> None:
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    for argv in (["bundle", str(path)], ["audit", "--bundle", str(path)]):
        assert verify(argv) == 1
        assert _one_line(capsys) == "edgeproof-verify: FAILED: bad_bundle: not JSON"


def test_deeply_nested_gateway_answer_is_bad_response_not_a_recursion_error(
        gateway: FakeGateway, capsys: Capture) -> None:
    gateway.answer(f"/v1/leaves/{LEAF}", DEEP)
    assert verify(_record(gateway)) == 1
    line = _one_line(capsys)
    assert line.startswith("edgeproof-verify: FAILED: bad_response:")
    assert line.endswith("not JSON")


# --- defect 5: a document the gateway refuses: its reason code, exit 1 -------------------


def test_document_refused_by_the_gateway_exits_1_with_its_reason_code_not_2(
        gateway: FakeGateway, tmp_path: Path, capsys: Capture) -> None:
    gateway.answer("/v1/documents", {"reason": "unknown_signer",
                                     "detail": "the signer is not a registered recipient"},
                   status=400)
    save_signing_key(tmp_path / "sign.key", SigningKey.generate())
    save_recipient_key(tmp_path / "seal.key", RecipientKey.generate())
    assert verify(["request", "--gateway", gateway.base, "--signing-key",
                   str(tmp_path / "sign.key"), "--recipient-key", str(tmp_path / "seal.key"),
                   "--device", DEVICE_ID.hex(), "--field", "cpu:Cel", "--not-before", "0",
                   "--not-after", "1000000", "--purpose", "test"]) == 1
    line = _one_line(capsys)
    assert line.startswith("edgeproof-verify: FAILED: ")
    assert "unknown_signer" in line
    with pytest.raises(DocumentRefusedByGateway) as refused:
        DocumentClient(gateway.base).submit(b"\x00")
    assert isinstance(refused.value, RejectedByPeer)  # permanent, not a transport failure
    assert refused.value.reason == "unknown_signer"


# --- defect 6: a mistyped URL or gateway key on the command line is bad usage (2) --------


@pytest.mark.parametrize("url", ["notaurl", "ftp://host/", "http://", "http://host:port"])
@pytest.mark.parametrize("command", [
    ["record", "--leaf", "1"], ["records", "--device", DEVICE_ID.hex()],
    ["audit", "--device", DEVICE_ID.hex()],
])
def test_bad_gateway_url_is_a_usage_error_exit_2_not_a_failed_check(
        capsys: Capture, url: str, command: list[str]) -> None:
    assert verify([*command, "--gateway", url]) == 2
    assert _one_line(capsys).startswith("edgeproof-verify: error: --gateway must be an "
                                        "http(s)://host[:port] URL")


def test_bad_rpc_url_is_a_usage_error_exit_2(capsys: Capture) -> None:
    assert verify(["record", "--gateway", "http://127.0.0.1:9", "--leaf", "1",
                   "--rpc", "localhost:8545"]) == 2
    assert _one_line(capsys).startswith("edgeproof-verify: error: --rpc must be")


def _bad_keys(tmp_path: Path) -> list[str]:
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    binary = tmp_path / "binary.key"
    binary.write_bytes(b"\xff\xfe\x00junk")
    directory = tmp_path / "keys"
    directory.mkdir()
    return ["garbage", "a+b+c", str(garbage), str(binary), str(directory)]


def test_garbage_or_directory_gateway_key_is_a_usage_error_exit_2_not_a_failed_check(
        tmp_path: Path, capsys: Capture) -> None:
    bundle = tmp_path / "proof.json"
    leaves = [merkle.leaf_hash(r) for r in RECORDS]
    bundle.write_text(ProofBundle(RECORDS[LEAF], DEVICE.public_key, LEAF, SIZE,
                                  tuple(merkle.inclusion_proof(leaves, LEAF)), NOTE,
                                  KEY).to_json())
    unreachable = "http://127.0.0.1:9"  # never asked: the key is checked first
    for key in _bad_keys(tmp_path):
        for argv in (["bundle", str(bundle)], ["record", "--gateway", unreachable, "--leaf",
                                               "1"],
                     ["audit", "--bundle", str(bundle)],
                     ["payout", "--gateway", unreachable, "--rpc", unreachable]):
            assert verify([*argv, "--gateway-key", key]) == 2, (argv, key)
            assert _one_line(capsys).startswith(f"edgeproof-verify: error: --gateway-key "
                                                f"{key!r}")
    key_file = tmp_path / "gateway.key"
    key_file.write_text(KEY + "\n")  # a file holding the key still works
    assert verify(["bundle", str(bundle), "--gateway-key", str(key_file)]) == 0


def test_bad_gateway_key_inside_a_bundle_stays_a_failed_check_exit_1(
        tmp_path: Path, capsys: Capture) -> None:
    leaves = [merkle.leaf_hash(r) for r in RECORDS]
    bundle = tmp_path / "proof.json"
    bundle.write_text(ProofBundle(RECORDS[LEAF], DEVICE.public_key, LEAF, SIZE,
                                  tuple(merkle.inclusion_proof(leaves, LEAF)), NOTE,
                                  "garbage").to_json())
    assert verify(["bundle", str(bundle)]) == 1
    assert _one_line(capsys).startswith("edgeproof-verify: FAILED: checkpoint signature: "
                                        "bad_verifier_key")
    assert verify(["bundle", str(bundle), "--gateway-key", KEY]) == 1
    assert _one_line(capsys).startswith("edgeproof-verify: FAILED: gateway key:")


# --- defect 7: an audit of a device enrolled without an owner key ------------------------


def test_audit_of_a_device_without_an_owner_key_says_so_exit_2_not_bad_response(
        gateway: FakeGateway, capsys: Capture) -> None:
    gateway.serve_log(HONEST_KEYS)  # "owner_key": null, as the gateway answers then
    gateway.answer(f"/v1/devices/{DEVICE_ID.hex()}/documents", [])
    gateway.answer(f"/v1/devices/{DEVICE_ID.hex()}/records", {"records": []})
    with pytest.raises(NoOwnerKey):
        DocumentClient(gateway.base).owner_key(DEVICE_ID)
    assert verify(["audit", "--gateway", gateway.base, "--device", DEVICE_ID.hex(),
                   "--gateway-key", KEY]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"edgeproof-verify: error: device {DEVICE_ID.hex()} has no "
                           "owner key")
    assert "hex" not in line
    # An owner key that is there but malformed is still a bad answer (1).
    gateway.answer(f"/v1/devices/{DEVICE_ID.hex()}/keys", {**HONEST_KEYS, "owner_key": 7})
    with pytest.raises(MalformedRecord, match="bad_response"):
        DocumentClient(gateway.base).owner_key(DEVICE_ID)
