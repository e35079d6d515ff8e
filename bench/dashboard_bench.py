"""Dashboard benchmark: what a page poll costs a gateway with 10,000 devices.

1. A SQLite store (the gateway's settings) gets ``--devices`` registered devices spread
   over ``--owners`` owners and ``--leaves`` logged records spread over the devices.
2. The real FastAPI app (``gateway.api.create_app``) over Starlette's in-process client:
   each dashboard request is timed ``--repeat`` times (interleaved; medians) against a
   bare baseline measured in the same run, the cheapest route there is
   (``GET /v1/verifier-key``, no store access).
   ``summary_compute`` is the summary's computation alone (``gateway.dashboard.summary``,
   no HTTP): what the one poll per second that recomputes it adds; the request
   ``/v1/dashboard/summary`` itself (``summary_cached``) is answered from the cache.
3. Ratios: each request's time ÷ the baseline's. The paged requests must not grow with
   the number of devices: the middle and last device pages cost what the first does.

Prints progress to stderr and ends with ONE line of JSON on stdout. Never asserts.
Run: ``python bench/dashboard_bench.py [--devices 10000] [--owners 2000] [--leaves 20000]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402

from gateway.api import create_app  # noqa: E402
from gateway.api_context import ApiContext  # noqa: E402
from gateway.dashboard import summary  # noqa: E402
from gateway.history import History, Sample  # noqa: E402
from gateway.metrics import GatewayMetrics  # noqa: E402
from gateway.sqlite_store import SQLiteLogStore  # noqa: E402
from gateway.store import NewLeaf  # noqa: E402
from protocol.keys import Secret  # noqa: E402


def log(message: str) -> None:
    print(f"[dashboard_bench] {message}", file=sys.stderr, flush=True)


def fill(store: SQLiteLogStore, devices: int, owners: int, leaves: int) -> list[bytes]:
    ids = []
    for i in range(devices):
        key = i.to_bytes(4, "big") * 8
        ids.append(store.register_device(f"dev-{i:05d}", key, f"owner-{i % owners:05d}",
                                         3600, 1).device_id)
    per_batch = 1000
    for start in range(0, leaves, per_batch):
        with store.transaction() as tx:
            for n in range(start, min(start + per_batch, leaves)):
                device = ids[n % devices]
                raw = n.to_bytes(8, "big") * 25
                tx.append(NewLeaf(device, n // devices, raw[:32], bytes(32), raw, "s", n))
    return ids


def median_ms(calls: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Time every call ``repeat`` times, interleaved (so a busy moment hits all of them
    alike); return each one's median in ms."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()  # warm
    for _ in range(repeat):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--owners", type=int, default=2_000)
    parser.add_argument("--leaves", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteLogStore(Path(tmp) / "log.sqlite")
        t0 = time.perf_counter()
        fill(store, args.devices, args.owners, args.leaves)
        log(f"{args.devices} devices, {args.owners} owners, {args.leaves} leaves in "
            f"{time.perf_counter() - t0:.1f} s")
        metrics = GatewayMetrics()
        history = History(lambda: Sample(0, store.size(), 0, 0, 0, {}), time.monotonic)
        ctx = ApiContext(store, metrics, "bench.local+00000000+AAAA", Secret(b"x" * 32),
                         lambda: 0, lambda: {"ok": True, "status": "ok"},
                         history=history)
        client = TestClient(create_app(ctx))
        middle = f"dev-{args.devices // 2:05d}"
        last = f"dev-{args.devices - 50:05d}"
        requests = {
            "baseline_verifier_key": "/v1/verifier-key",
            "devices_first_page": "/v1/dashboard/devices?limit=50",
            "devices_middle_page": f"/v1/dashboard/devices?limit=50&after={middle}",
            "devices_last_page": f"/v1/dashboard/devices?limit=50&after={last}",
            "owners_first_page": "/v1/owners?limit=50",
            "summary_cached": "/v1/dashboard/summary",
        }
        calls: dict[str, Callable[[], object]] = {
            name: (lambda p=path: client.get(p).raise_for_status())
            for name, path in requests.items()}
        calls["summary_compute"] = lambda: summary(ctx)
        figures = median_ms(calls, args.repeat)
        store.close()
    base = figures["baseline_verifier_key"]
    for name, ms in figures.items():
        log(f"{name:24s} {ms:8.2f} ms   {ms / base:6.1f} x baseline")
    print(json.dumps({"devices": args.devices, "owners": args.owners, "leaves": args.leaves,
                      "ms": {k: round(v, 3) for k, v in figures.items()},
                      "ratio_to_baseline": {k: round(v / base, 2)
                                            for k, v in figures.items()}}))


if __name__ == "__main__":
    main()
