"""The verifier's HTTP client against a hostile gateway: bodies are read with a size cap."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from protocol.errors import MalformedRecord
from verifier import client as client_module
from verifier.client import MAX_RESPONSE_BYTES, GatewayClient

CHECKPOINT = "gateway.example/log\n1\nAAAA\n"


class _Hostile(BaseHTTPRequestHandler):
    """Serves what each path names: an oversized body, a gzip bomb, or a plain checkpoint."""

    def do_GET(self) -> None:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.path == "/big/v1/checkpoint":
            body = b"x" * (MAX_RESPONSE_BYTES + 1)
        elif self.path == "/bomb/v1/checkpoint":
            body = gzip.compress(b"\0" * (4 * MAX_RESPONSE_BYTES))
            headers["Content-Encoding"] = "gzip"
        elif self.path == "/bogus-charset/v1/checkpoint":
            body = CHECKPOINT.encode()
            headers["Content-Type"] = "text/plain; charset=no-such-charset"
        elif self.path == "/fine/v1/leaves/0":
            body = b"{not json"
            headers["Content-Type"] = "application/json"
        else:
            body = CHECKPOINT.encode()
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hostile_gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_oversized_gateway_response_refused(hostile_gateway: str) -> None:
    with pytest.raises(MalformedRecord, match="over"):
        GatewayClient(f"{hostile_gateway}/big").checkpoint()


def test_gzip_bomb_refused_at_the_decoded_size(hostile_gateway: str) -> None:
    with pytest.raises(MalformedRecord, match="over"):
        GatewayClient(f"{hostile_gateway}/bomb").checkpoint()


def test_unknown_charset_read_as_utf8(hostile_gateway: str) -> None:
    assert GatewayClient(f"{hostile_gateway}/bogus-charset").checkpoint() == CHECKPOINT


def test_non_json_answer_is_malformed(hostile_gateway: str) -> None:
    with pytest.raises(MalformedRecord, match="not JSON"):
        GatewayClient(f"{hostile_gateway}/fine").leaf(0)


def test_plain_checkpoint_read_in_full(hostile_gateway: str) -> None:
    assert GatewayClient(f"{hostile_gateway}/fine").checkpoint() == CHECKPOINT


class _Wallets(BaseHTTPRequestHandler):
    """GET /v1/wallets: five bindings a page at a time (``/stuck/`` ignores ``after``)."""

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        after = -1 if path.startswith("/stuck/") else int(params.get("after", "-1"))
        rows = [{"leaf_index": 10 * i, "document": f"{i:02x}"} for i in range(5)]
        page = [r for r in rows if r["leaf_index"] > after][:int(params.get("limit", "1000"))]
        body = json.dumps(page).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_wallet_bindings_follow_the_pages_and_refuse_a_page_that_does_not_move_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "WALLETS_PAGE", 2)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Wallets)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        found = GatewayClient(url).wallet_bindings()
        assert found == [(10 * i, bytes([i])) for i in range(5)]
        with pytest.raises(MalformedRecord, match="out of log order"):
            GatewayClient(f"{url}/stuck").wallet_bindings()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
