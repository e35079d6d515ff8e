"""What one checkpoint costs the sequencer as the fleet's owners grow.

A checkpoint covers the whole balances table (docs/PROTOCOL.md, the ``balances``
extension line): :meth:`gateway.checkpoints.Checkpointer.issue` reads every owner's
balance, sorts and encodes the table, hashes it, signs the note and stores the note with
the table. So its cost grows with the number of owners, and the sequencer thread pays it
between batches. For each owner count this prints:

- ``issue_ms``: CPU time of one ``issue()`` on a real SQLite store (best of ``--rounds``,
  one new leaf before each, so each round signs a new checkpoint);
- ``balances_bytes``: the size of the canonical table stored with it;
- ``in_verifies``: ``issue_ms`` in bare Ed25519 verifies (PyNaCl, one thread), measured in
  the same run: how many records' verification one checkpoint costs.

The devices (one per owner) are written straight into the store's ``devices`` table: the
registration API would take one transaction per device. Ends with ONE line of JSON.
Run: ``python bench/checkpoint_bench.py [--owners 1000,10000,100000] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import nacl.signing

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.anchor import LocalAnchor  # noqa: E402
from gateway.checkpoints import Checkpointer  # noqa: E402
from gateway.config import CheckpointConfig  # noqa: E402
from gateway.gatewaykey import GatewayKey  # noqa: E402
from gateway.metrics import GatewayMetrics  # noqa: E402
from gateway.sqlite_store import SQLiteLogStore  # noqa: E402
from gateway.store import NewLeaf  # noqa: E402


def log(message: str) -> None:
    print(f"[checkpoint_bench] {message}", file=sys.stderr, flush=True)


def bare_verify_ms(n: int = 3000) -> float:
    """CPU milliseconds of one bare Ed25519 verify (best of three passes)."""
    key = nacl.signing.SigningKey(bytes(range(32)))
    signed = [key.sign(os.urandom(150)) for _ in range(n)]
    verify = key.verify_key.verify
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for item in signed:
            verify(item)
        best = min(best, time.process_time() - start)
    return best * 1000 / n


def add_owners(path: Path, owners: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO devices (device_id, name, public_key, owner, rate_micro_per_hour, "
            "status, registered_ms, settled_micro) VALUES (?, ?, ?, ?, ?, 'active', 0, ?)",
            [(os.urandom(16), f"device-{i}", os.urandom(32), f"owner-{i:07d}", 1_000_000,
              i * 7919 % 1_000_003) for i in range(owners)])
    conn.close()


def issue_cost(workdir: Path, owners: int, rounds: int) -> tuple[float, int]:
    """(best CPU ms of one issue(), bytes of the balances table) with ``owners`` owners."""
    path = workdir / f"log-{owners}.sqlite"
    SQLiteLogStore(path).close()  # the schema
    add_owners(path, owners)
    store = SQLiteLogStore(path)
    try:
        checkpointer = Checkpointer(store, GatewayKey.generate("bench.example/checkpoints"),
                                    LocalAnchor(lambda: 0), config=CheckpointConfig(),
                                    metrics=GatewayMetrics(), wall_ms=lambda: 0,
                                    monotonic=time.monotonic)
        best, size = float("inf"), 0
        for seq in range(rounds):
            with store.transaction() as tx:
                tx.append(NewLeaf(b"\x01" * 16, seq, os.urandom(32), b"\x00" * 32,
                                  os.urandom(168), "bench", 0))
            start = time.process_time()
            stored = checkpointer.issue()
            best = min(best, time.process_time() - start)
            assert stored is not None
            size = len(stored.balances)
        return best * 1000, size
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owners", default="1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    counts = [int(n) for n in args.owners.split(",")]
    verify_ms = bare_verify_ms()
    log(f"bare verify: {verify_ms * 1000:.1f} µs")
    result: dict[str, float] = {"bare_verify_us": round(verify_ms * 1000, 2)}
    with tempfile.TemporaryDirectory(prefix="checkpoint-bench-") as tmp:
        for owners in counts:
            ms, size = issue_cost(Path(tmp), owners, args.rounds)
            log(f"{owners} owners: issue {ms:.2f} ms of CPU ({ms / verify_ms:.0f} verifies), "
                f"balances {size} bytes")
            result[f"issue_ms_{owners}"] = round(ms, 3)
            result[f"balances_bytes_{owners}"] = size
            result[f"in_verifies_{owners}"] = round(ms / verify_ms, 1)
    largest = counts[-1]
    result["us_per_owner"] = round(result[f"issue_ms_{largest}"] * 1000 / largest, 2)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
