"""osutil.jsonrpc: the one JSON-RPC client (the gateway's anchor and the verifier).

A real HTTP server on a free loopback port plays the node, so the client's real
``requests`` path is exercised, including answers a hostile node could send.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from firmware_sim.broker import free_port
from osutil.jsonrpc import MAX_ANSWER_BYTES, JsonRpc, RpcError, node_address, quantity
from protocol.errors import TransportError

Answer = Callable[[dict[str, object]], tuple[int, bytes]]


class Node:
    """A loopback HTTP server answering each POST with ``self.answer(request)``."""

    def __init__(self) -> None:
        self.answer: Answer = lambda req: (200, b"{}")
        self.requests: list[dict[str, object]] = []
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                node.requests.append(body)
                status, payload = node.answer(body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                # The client may stop reading at its cap: that is what one test checks.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node()
    try:
        yield n
    finally:
        n.close()


def result(value: object) -> Answer:
    return lambda req: (200, json.dumps({"jsonrpc": "2.0", "id": req["id"],
                                         "result": value}).encode())


def test_call_returns_result_and_numbers_requests(node: Node) -> None:
    node.answer = result("0x539")
    rpc = JsonRpc(node.url, timeout_s=5)
    assert rpc.chain_id() == 1337
    assert rpc.block_number() == 1337
    assert [r["id"] for r in node.requests] == [1, 2]
    assert node.requests[0]["method"] == "eth_chainId"
    rpc.close()


def test_node_error_object_is_a_refusal_with_its_code(node: Node) -> None:
    node.answer = lambda req: (200, json.dumps({"jsonrpc": "2.0", "id": req["id"], "error": {
        "code": -32000, "message": "execution reverted"}}).encode())
    with pytest.raises(RpcError) as info:
        JsonRpc(node.url).estimate_gas("0x" + "11" * 20, "0x" + "22" * 20, b"\x01")
    assert info.value.code == -32000
    assert info.value.reverted


@pytest.mark.parametrize("answer", [
    lambda req: (500, b"<html>oops</html>"),
    lambda req: (200, b"not json"),
    lambda req: (200, b"[1, 2]"),
    lambda req: (200, b'{"jsonrpc": "2.0", "id": 1}'),
    lambda req: (200, b'{"error": "string, not an object"}'),
])
def test_answer_that_is_not_json_rpc_is_a_transport_error(node: Node, answer: Answer) -> None:
    node.answer = answer
    with pytest.raises(TransportError):
        JsonRpc(node.url).call("eth_chainId")


def test_oversized_answer_is_refused_without_parsing_it(node: Node) -> None:
    huge = b'{"result": "' + b"0" * (MAX_ANSWER_BYTES + 10) + b'"}'
    node.answer = lambda req: (200, huge)
    with pytest.raises(TransportError, match="larger than"):
        JsonRpc(node.url).call("eth_chainId")


def test_unreachable_node_is_a_transport_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TransportError, match="unreachable"):
        JsonRpc(url, timeout_s=2).chain_id()


def test_malformed_quantities_and_objects_are_refused(node: Node) -> None:
    for bad in (None, 5, "12", "0xZZ"):
        with pytest.raises(TransportError, match="malformed"):
            quantity(bad, "nonce")
    node.answer = result(["not", "an", "object"])
    with pytest.raises(TransportError, match="malformed object"):
        JsonRpc(node.url).receipt("0x" + "ab" * 32)
    node.answer = result(None)
    assert JsonRpc(node.url).transaction("0x" + "ab" * 32) is None


def test_a_node_urls_api_key_never_reaches_an_error_or_a_log_line() -> None:
    # Hosted nodes carry the key in the path or the user info; the anchor's and the
    # payout's messages (the payout's is served on /healthz) printed the whole URL.
    url = "https://user:pa55@mainnet.node.example:8443/v3/S3CRETKEY?x=1"
    assert node_address(url) == "https://mainnet.node.example:8443"
    assert node_address("http://[::1]:8545/KEY") == "http://[::1]:8545"
    with pytest.raises(TransportError) as refused:
        JsonRpc("http://127.0.0.1:9/v3/S3CRETKEY", timeout_s=2).chain_id()
    assert "S3CRETKEY" not in str(refused.value)
    assert "http://127.0.0.1:9" in str(refused.value)


def test_a_node_answering_deeply_nested_json_is_a_transport_error_not_a_crash(
        node: Node) -> None:
    # The anchor and the payout read a node nobody vouches for; in a process that loaded
    # py_ecc (recursion limit 100,000) json's decoder overflowed the C stack on this.
    node.answer = lambda req: (200, b"[" * 500_000)
    with pytest.raises(TransportError, match="without a JSON-RPC object"):
        JsonRpc(node.url, timeout_s=5).chain_id()
