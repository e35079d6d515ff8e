"""Log store benchmark: SQLite and PostgreSQL appending and reading through the store API.

1. Bare rates in the same run: Ed25519 verifies per second (PyNaCl, one thread; what the
   gateway's ingest is measured against) and the in-memory tree append (leaf hash plus
   ``CompactRange.append``) the stores do on top of their writes.
2. Each store appends ``--records`` leaves of 199-byte records in transactions of
   ``--batch`` leaves, each preceded by the dedup lookup (``links``) the sequencer makes,
   then reads ``--reads`` random leaves and inclusion proofs from another thread's reader.
   SQLite: WAL, ``synchronous=FULL`` (the gateway's settings). PostgreSQL: a private
   cluster (tests/pg.py) on loopback with fsync on and ``synchronous_commit=on``.
3. Ratios: each store's append rate ÷ bare verify (≥ 1 means the store is not what limits
   a one-core gateway) and PostgreSQL ÷ SQLite.

Prints progress to stderr and ends with ONE line of JSON on stdout. Never asserts.
Run: ``python bench/store_bench.py [--records 50000] [--batch 100] [--reads 2000]``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import nacl.signing

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.pg_store import PostgresLogStore  # noqa: E402
from gateway.sqlite_store import SQLiteLogStore  # noqa: E402
from gateway.store import LogStore, NewLeaf  # noqa: E402
from protocol import merkle  # noqa: E402
from tests.pg import start_cluster  # noqa: E402

RECORD_BYTES = 199


def log(message: str) -> None:
    print(f"[store_bench] {message}", file=sys.stderr, flush=True)


def bare_verify_per_s(seconds: float = 2.0) -> float:
    key = nacl.signing.SigningKey(bytes(32))
    signed = key.sign(bytes(RECORD_BYTES))
    verify = key.verify_key.verify
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            verify(signed)
        count += 200
    return count / (time.perf_counter() - start)


def bare_tree_per_s(raws: list[bytes]) -> float:
    tree = merkle.CompactRange.from_state([])
    start = time.perf_counter()
    for raw in raws:
        tree.append(merkle.leaf_hash(raw))
    return len(raws) / (time.perf_counter() - start)


def append_per_s(store: LogStore, raws: list[bytes], batch: int) -> float:
    device = b"b" * 16
    start = time.perf_counter()
    for first in range(0, len(raws), batch):
        with store.transaction() as tx:
            chunk = raws[first:first + batch]
            tx.links(device, first, first + len(chunk) - 1)
            for offset, raw in enumerate(chunk):
                seq = first + offset
                tx.append(NewLeaf(device, seq, bytes(32), bytes(32), raw, "s", seq))
    return len(raws) / (time.perf_counter() - start)


def reads(store: LogStore, count: int, rng: random.Random) -> tuple[float, float]:
    """Leaf reads per second and mean inclusion-proof ms, from a fresh reader thread."""
    size = store.size()
    found: list[float] = []

    def run() -> None:
        indices = [rng.randrange(size) for _ in range(count)]
        start = time.perf_counter()
        for index in indices:
            store.leaf(index)
        found.append(count / (time.perf_counter() - start))
        start = time.perf_counter()
        for index in indices[:200]:
            merkle.inclusion_proof_from_nodes(store, index, size)
        found.append((time.perf_counter() - start) * 1000 / min(200, count))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return found[0], found[1]


def measure(name: str, open_store: Callable[[], LogStore], raws: list[bytes], batch: int,
            count: int) -> dict[str, float]:
    store = open_store()
    try:
        rate = append_per_s(store, raws, batch)
        log(f"{name}: {rate:,.0f} records/s appended")
        leaf_rate, proof_ms = reads(store, count, random.Random(2))
        log(f"{name}: {leaf_rate:,.0f} leaf reads/s, inclusion proof {proof_ms:.2f} ms")
    finally:
        store.close()
    return {"append": rate, "reads": leaf_rate, "proof_ms": proof_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()
    rng = random.Random(1)
    raws = [rng.randbytes(RECORD_BYTES) for _ in range(args.records)]
    verify_before = bare_verify_per_s()
    tree = bare_tree_per_s(raws)
    log(f"bare: {verify_before:,.0f} verifies/s, {tree:,.0f} tree appends/s")
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        sqlite = measure("sqlite", lambda: SQLiteLogStore(Path(tmp) / "log.sqlite"), raws,
                         args.batch, args.reads)
    cluster = start_cluster(durable=True)
    try:
        database = cluster.create_database()
        pg = measure("postgresql",
                     lambda: PostgresLogStore(cluster.dsn(database), cluster.password),
                     raws, args.batch, args.reads)
    finally:
        cluster.stop()
    verify = (verify_before + bare_verify_per_s()) / 2
    print(json.dumps({
        "records": args.records, "batch": args.batch,
        "bare_verify_per_s": round(verify), "bare_tree_appends_per_s": round(tree),
        "sqlite_append_records_per_s": round(sqlite["append"]),
        "pg_append_records_per_s": round(pg["append"]),
        "sqlite_ratio_to_bare_verify": round(sqlite["append"] / verify, 2),
        "pg_ratio_to_bare_verify": round(pg["append"] / verify, 2),
        "pg_to_sqlite_append_ratio": round(pg["append"] / sqlite["append"], 2),
        "sqlite_leaf_reads_per_s": round(sqlite["reads"]),
        "pg_leaf_reads_per_s": round(pg["reads"]),
        "sqlite_inclusion_proof_ms": round(sqlite["proof_ms"], 3),
        "pg_inclusion_proof_ms": round(pg["proof_ms"], 3),
    }))


if __name__ == "__main__":
    main()
