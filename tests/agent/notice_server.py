"""A stand-in for the gateway's ``GET /v1/payouts/notice/{owner}`` on a real HTTP socket.

The agent's payout watcher (agent/local_mqtt/payout.py) talks to it over HTTP exactly as to
the gateway; the test decides what it answers (a notice signed by the Responder's gateway
key, by another key, for another owner, garbage). The gateway's own endpoint is tested on a
real gateway and chain in tests/rewards/test_payout_end_to_end.py.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from protocol.documents import sign_document
from protocol.keys import SigningKey
from protocol.payout_notice import PayoutNotice


class NoticeServer:
    """Serves ``answer`` (status, body) to every GET; counts the GETs per path."""

    def __init__(self) -> None:
        self.answer: tuple[int, bytes] = (404, b'{"detail": "no posted epoch"}')
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.paths.append(self.path)
                status, body = server.answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def serve(self, notice: PayoutNotice, key: SigningKey) -> bytes:
        """Answer 200 with ``notice`` signed by ``key`` (as the gateway's JSON does)."""
        raw = sign_document(notice, key, 1_700_000_000_000).raw
        self.answer = (200, json.dumps({"document": raw.hex()}).encode())
        return raw

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
