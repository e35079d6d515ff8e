"""HTTP flood benchmark: what a client holding no credential costs the gateway's API.

On loopback only, against a real gateway (``python -m gateway.cli run``, uvicorn, a child
process started with systemd's default soft file-handle limit of 1024) and a private
Mosquitto:

1. baseline: the idle gateway's RSS (VmRSS) and honest ``GET /healthz`` latency;
2. three unauthenticated ``POST /v1/devices`` at once, each declaring a 200 MB body and
   sending it as fast as the socket takes it until an answer arrives: ``body_bytes_sent``
   (what ``send()`` accepted: the server's reads plus both kernels' socket buffers), the
   status answered, and the gateway's peak RSS (VmHWM);
3. 1,100 half-sent requests (headers never finished) held open, while honest
   ``GET /healthz`` requests keep being made: how many succeeded, how many half-sent
   connections the server closed within ``--wait`` seconds, "Too many open files" lines and
   log bytes written.

``--repo DIR`` runs the gateway of another checkout (for a before/after comparison).
Prints progress to stderr and ends with ONE line of JSON on stdout. Never asserts.
Run: ``python bench/http_flood_bench.py [--repo DIR] [--slow 1100] [--wait 30]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from firmware_sim.broker import MosquittoBroker, free_port  # noqa: E402
from tests.gateway.gwkit import write_gateway_files  # noqa: E402

BODY_BYTES = 200 * 1000 * 1000
CHUNK = b"\0" * (1 << 20)
SYSTEMD_DEFAULT_NOFILE = 1024


def log(message: str) -> None:
    print(f"[http_flood_bench] {message}", file=sys.stderr, flush=True)


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def healthz_ms(url: str) -> float | None:
    started = time.monotonic()
    try:
        ok = httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return None
    return (time.monotonic() - started) * 1000 if ok else None


def huge_post(port: int, result: dict[str, object]) -> None:
    """POST a 200 MB body without a token; note bytes sent and the answer's status."""
    sent, started = 0, time.monotonic()
    head = (f"POST /v1/devices HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            f"Content-Length: {BODY_BYTES}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head)
        answer = b""
        try:
            while sent < BODY_BYTES:
                readable, writable, _ = select.select([sock], [sock], [], 60)
                if readable:
                    break
                if writable:
                    sent += sock.send(CHUNK[: min(len(CHUNK), BODY_BYTES - sent)])
            answer = sock.recv(4096)
        except OSError as exc:  # the server closed while we were still sending
            result["error"] = type(exc).__name__
        result["body_bytes_sent"] = sent
        result["status"] = answer.split(b" ", 2)[1].decode() if answer.count(b" ") >= 2 else ""
        result["seconds"] = round(time.monotonic() - started, 3)


def half_sent(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        except OSError:
            continue
        sock.setblocking(False)
        socks.append(sock)
    return socks


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def start_gateway(repo: Path, config: Path, port: int, logfile: Path) -> subprocess.Popen[bytes]:
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)], cwd=repo,
            stdout=out, stderr=subprocess.STDOUT)
    # The limit systemd gives a service by default, set while Python is still starting.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (SYSTEMD_DEFAULT_NOFILE, hard))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if healthz_ms(f"http://127.0.0.1:{port}") is not None:
            return proc
        time.sleep(0.05)
    raise RuntimeError(f"gateway did not start; see {logfile}")


def run(repo: Path, slow_count: int, wait_s: float, workdir: Path) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, slow_count + 512)), hard))
    broker = MosquittoBroker(workdir / "broker")
    broker.start()
    port = free_port()
    files = write_gateway_files(workdir / "gw", broker.port, http_port=port)
    logfile = workdir / "gateway.log"
    proc = start_gateway(repo, files.config, port, logfile)
    url = f"http://127.0.0.1:{port}"
    out: dict[str, object] = {"repo": str(repo), "gateway_nofile_soft": SYSTEMD_DEFAULT_NOFILE}
    try:
        time.sleep(1.0)  # let start-up allocations settle before the baseline
        out["rss_idle_mib"] = round(proc_kib(proc.pid, "VmRSS") / 1024, 1)
        base = [m for m in (healthz_ms(url) for _ in range(20)) if m is not None]
        out["healthz_idle_median_ms"] = round(statistics.median(base), 2)

        log("three unauthenticated 200 MB POSTs at once")
        posts: list[dict[str, object]] = [{}, {}, {}]
        threads = [threading.Thread(target=huge_post, args=(port, r)) for r in posts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        out["huge_posts"] = posts
        out["rss_after_posts_mib"] = round(proc_kib(proc.pid, "VmRSS") / 1024, 1)
        out["rss_peak_after_posts_mib"] = round(proc_kib(proc.pid, "VmHWM") / 1024, 1)

        log(f"{slow_count} half-sent requests")
        log_bytes_before = logfile.stat().st_size
        socks = half_sent(port, slow_count)
        out["half_sent_opened"] = len(socks)
        honest: list[float | None] = []
        started = time.monotonic()
        while time.monotonic() - started < wait_s:
            honest.append(healthz_ms(url))
            if all(closed_by_server(s) for s in socks if s.fileno() >= 0):
                break
            time.sleep(0.2)
        closed = sum(1 for s in socks if closed_by_server(s))
        for sock in socks:
            sock.close()
        ok = [m for m in honest if m is not None]
        out["half_sent_closed_by_server"] = closed
        out["half_sent_seconds_until_all_closed_or_wait"] = round(time.monotonic() - started, 1)
        out["healthz_during_flood_ok"] = len(ok)
        out["healthz_during_flood_failed"] = len(honest) - len(ok)
        out["healthz_during_flood_max_ms"] = round(max(ok), 1) if ok else None
        out["healthz_after_flood_ok"] = healthz_ms(url) is not None
        out["rss_peak_mib"] = round(proc_kib(proc.pid, "VmHWM") / 1024, 1)
        out["peak_to_idle_rss_ratio"] = round(
            float(out["rss_peak_mib"]) / float(out["rss_idle_mib"]), 2)  # type: ignore[arg-type]
        text = logfile.read_text(errors="replace")
        out["log_bytes_during_flood"] = logfile.stat().st_size - log_bytes_before
        out["log_too_many_open_files_lines"] = text.count("Too many open files")
        metrics = httpx.get(f"{url}/metrics", timeout=10).text if ok else ""
        out["http_rejections"] = {
            line.split('reason="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("edgeproof_gateway_http_rejections_total{")}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        broker.kill()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="checkout whose gateway to run (default: this one)")
    parser.add_argument("--slow", type=int, default=1100, help="half-sent requests to open")
    parser.add_argument("--wait", type=float, default=30.0,
                        help="seconds to wait for the server to close them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="http-flood-") as tmp:
        result = run(args.repo.resolve(), args.slow, args.wait, Path(tmp))
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
