"""Attacks on the HTTP API by a client holding no credential, against the gateway as it runs
in production (``python -m gateway.cli run``: uvicorn, the real protocol and middleware).

Each attack was tried against c99a614 first: there a huge unauthenticated body was read
whole before the 401, malformed JSON without a token got 422, half-sent requests were kept
open for ever and every invalid request wrote a log line.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from firmware_sim.broker import MosquittoBroker, free_port
from firmware_sim.procs import GatewayProcess
from tests.gateway.gwkit import ADMIN_TOKEN, write_gateway_files
from tests.harness.waiting import eventually

MAX_BODY = 4096
MAX_CONNECTIONS = 32
WAIT_S = 30.0  # an upper bound on waiting for a condition, never a measured duration
HTTP_LIMITS = f"""max_body_bytes = {MAX_BODY}
request_timeout_s = 2.0
keepalive_timeout_s = 2
max_connections = {MAX_CONNECTIONS}
"""


@dataclass
class Served:
    process: GatewayProcess
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rejections(self, reason: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=WAIT_S).text
        found = re.search(
            rf'^edgeproof_gateway_http_rejections_total{{reason="{reason}"}} (\S+)$', text, re.M)
        assert found, f"no http_rejections counter for {reason}"
        return float(found.group(1))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("http-attacks")
    broker = MosquittoBroker(tmp / "broker")
    broker.start()
    port = free_port()
    files = write_gateway_files(tmp / "gw", broker.port, http_port=port,
                                http_extra=HTTP_LIMITS)
    process = GatewayProcess(files.config, f"http://127.0.0.1:{port}", tmp / "gateway.log")
    try:
        process.start()
        yield Served(process, port, tmp / "gateway.log")
        assert process.stop() == 0
    finally:
        process.kill()
        broker.kill()


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection; return all the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            raise AssertionError(f"the server neither answered nor closed: {received!r}") from None
        return received


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway", *(f"{k}: {v}" for k, v in
                                                              headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_unauthenticated_200_mb_body_is_refused_after_the_headers_alone(served) -> None:
    # Not one byte of the body is sent: the answer must come from the headers alone, and
    # the server must then close (so the rest would never be read).
    answer = exchange(served.port, head("POST", "/v1/devices", {
        "Content-Type": "application/json", "Content-Length": str(200 * 1024 * 1024)}))
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert b"connection: close" in answer.lower()
    assert served.rejections("unauthenticated") >= 1


def test_declared_body_over_the_cap_is_refused_before_it_is_read_even_with_the_token(
        served) -> None:
    answer = exchange(served.port, head("POST", "/v1/devices", {
        "Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json",
        "Content-Length": str(MAX_BODY + 1)}))
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b"connection: close" in answer.lower()


def test_chunked_body_is_cut_off_at_the_cap(served) -> None:
    chunk = b"800\r\n" + b"x" * 0x800 + b"\r\n"  # 2 KiB per chunk, and no final chunk
    answer = exchange(served.port, head("POST", "/v1/devices", {
        "Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json",
        "Transfer-Encoding": "chunked"}) + chunk * 3)
    assert answer.startswith(b"HTTP/1.1 413 "), answer


def test_malformed_json_without_a_token_gets_401_not_422(served) -> None:
    response = httpx.post(f"{served.url}/v1/devices", content=b'{"name": ',
                          headers={"Content-Type": "application/json"}, timeout=WAIT_S)
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": "admin token required"}


def test_slowloris_connections_are_closed_and_honest_requests_still_succeed(served) -> None:
    slow = []
    for _ in range(3 * MAX_CONNECTIONS):
        sock = socket.create_connection(("127.0.0.1", served.port), timeout=WAIT_S)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")  # never finished
        slow.append(sock)
    try:
        for _ in range(5):  # honest clients get through while the slow ones are open
            assert httpx.get(f"{served.url}/healthz", timeout=WAIT_S).status_code == 200
        for sock in slow:  # each slow connection is closed by the server: EOF or reset
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1024) == b""
    finally:
        for sock in slow:
            sock.close()
    counted = served.rejections("request_timeout") + served.rejections("too_many_connections")
    assert counted >= len(slow)
    assert httpx.get(f"{served.url}/healthz", timeout=WAIT_S).status_code == 200


def closed_by_server(sock: socket.socket) -> tuple[bool, int]:
    """Read ``sock`` until the server's EOF or reset: (whether it came, bytes read)."""
    received = 0
    try:
        while chunk := sock.recv(65536):
            received += len(chunk)
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False, received
    return True, received


def test_clients_that_never_read_their_responses_cannot_hold_every_connection(
        served) -> None:
    schema = len(httpx.get(f"{served.url}/openapi.json", timeout=WAIT_S).content)
    # More than the kernel's socket buffers take in (Linux's tcp_wmem grows to 4 MiB): the
    # rest waits in the gateway's memory for a client that never reads it.
    pipelined = -(-16 * 1024 * 1024 // schema)
    before = {reason: served.rejections(reason)
              for reason in ("response_timeout", "too_many_connections")}
    readers_not = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.settimeout(WAIT_S)
            sock.connect(("127.0.0.1", served.port))
            # Large responses, pipelined, and not one byte of them read (yet).
            sock.sendall(head("GET", "/openapi.json", {}) * pipelined)
            readers_not.append(sock)

        def honest_answered() -> bool:
            try:
                return httpx.get(f"{served.url}/healthz", timeout=WAIT_S).status_code == 200
            except httpx.HTTPError:
                return False  # closed to make room: the gateway may pick the newcomer

        eventually(honest_answered, "an honest /healthz answered while non-readers hold "
                   "every connection", WAIT_S, every_s=0.1)

        def counted() -> float:
            return sum(served.rejections(reason) - before[reason] for reason in before)

        eventually(lambda: counted() >= MAX_CONNECTIONS,
                   "every non-reading connection closed and counted", WAIT_S, every_s=0.1)
        assert served.rejections("response_timeout") > before["response_timeout"]
        # Only now read: the server has closed each connection without sending the rest
        # (what arrives is what the kernels' socket buffers already held).
        for sock in readers_not:
            closed, received = closed_by_server(sock)
            assert closed, "a non-reading connection was left open"
            assert received < pipelined * schema, "the stalled responses were flushed"
    finally:
        for sock in readers_not:
            sock.close()
    assert httpx.get(f"{served.url}/healthz", timeout=WAIT_S).status_code == 200


def test_a_trickled_request_is_closed_although_bytes_keep_coming(served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=WAIT_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        closed = False
        for _ in range(int(WAIT_S * 10)):
            # One header byte at a time, each before the keep-alive timer could fire.
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                closed = sock.recv(1024) == b""
                break
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "the server kept a trickling request open"


def test_a_flood_of_invalid_requests_writes_a_few_log_lines_not_one_each(served) -> None:
    for _ in range(60):
        answer = exchange(served.port, b"NOT HTTP AT ALL\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
    # The answers are written after the log line (uvicorn logs, then answers), and the
    # handler flushes every line: the log is complete for these 60 by now.
    lines = [line for line in served.log.read_text().splitlines()
             if "Invalid HTTP request received" in line]
    assert 1 <= len(lines) <= 5, lines


def test_deeply_nested_json_is_a_counted_400_and_the_gateway_goes_on(served) -> None:
    # json's decoder recurses per level: 4,000 levels raised RecursionError inside FastAPI
    # (a 500), and past the recursion limit py_ecc sets it overflowed the C stack (SIGSEGV:
    # rewards/ethkey.py puts the limit back).
    before = served.rejections("bad_body")
    answer = httpx.post(f"{served.url}/v1/wallets", content=b"[" * (MAX_BODY - 10),
                        headers={"Content-Type": "application/json"}, timeout=WAIT_S)
    assert answer.status_code == 400, answer.text
    assert "\n" not in answer.json()["detail"]
    assert served.rejections("bad_body") == before + 1, answer.text
    assert httpx.get(f"{served.url}/healthz", timeout=WAIT_S).status_code == 200
