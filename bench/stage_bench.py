"""CPU time per record of each stage of the gateway's pipeline, in one process.

On a shared machine wall-clock drains swing with other work; CPU time per record
(``time.process_time``) swings much less, so this bench prints where each record's
microseconds go, next to one core's bare Ed25519 verify of the same records measured in
the same run:

- ``bare_verify_us``: PyNaCl's verify of the record's to-be-signed bytes (bench/gateway_bench.py);
- ``parse_us``: ``protocol.signed.parse_signed_record`` (COSE_Sign1 and record decoding);
- ``worker_us``: what a verify worker does per record: ``prepare_batch`` (batch and record
  decoding, caps, the signature check) plus ``verify_pool.pack`` and ``pickle.dumps``;
- ``sequencer_us``: what the gateway process does with a worker's result: ``pickle.loads``,
  ``verify_pool.unpack`` and ``Sequencer.commit_group`` in groups of 16 batches on a real
  SQLite store (rules, appends, Merkle nodes, COMMIT, receipts, checkpoints when due).

``ceiling_ratio_2_cores`` = 2 × bare ÷ (worker + sequencer): the best one gateway process
could reach on two otherwise idle cores if nothing else cost anything (MQTT, the process
pool's pipes and threads are not counted here). Each stage is measured ``--rounds`` times
(fresh store each round) and the best round is printed. Ends with ONE line of JSON.
Run: ``python bench/stage_bench.py [--batches 200] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import nacl.signing

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.anchor import LocalAnchor  # noqa: E402
from gateway.checkpoints import Checkpointer  # noqa: E402
from gateway.config import CheckpointConfig, Limits  # noqa: E402
from gateway.gatewaykey import GatewayKey  # noqa: E402
from gateway.metrics import GatewayMetrics  # noqa: E402
from gateway.sequencer import Sequencer  # noqa: E402
from gateway.sqlite_store import SQLiteLogStore  # noqa: E402
from gateway.verify import prepare_batch  # noqa: E402
from gateway.verify_pool import pack, settle_heap, unpack  # noqa: E402
from protocol.batch import records_topic  # noqa: E402
from protocol.cose import decode_sign1  # noqa: E402
from protocol.signed import parse_signed_record  # noqa: E402
from tests.gateway.gwkit import RATE, START_WALL_MS, TestDevice, batch_bytes  # noqa: E402

DEVICES = 20
BATCH_RECORDS = 100
GROUP = 16
NOW_MS = START_WALL_MS + 86_400_000


def log(message: str) -> None:
    print(f"[stage_bench] {message}", file=sys.stderr, flush=True)


def _us(seconds: float, records: int) -> float:
    return round(seconds * 1e6 / records, 2)


def make_batches(n_batches: int) -> tuple[list[TestDevice], list[tuple[str, bytes]]]:
    devices = [TestDevice.create(f"dev{i}", 1000 + i) for i in range(DEVICES)]
    messages = [(records_topic(dev.device_id), batch_bytes(dev.records(BATCH_RECORDS), b))
                for b in range(n_batches // DEVICES) for dev in devices]
    return devices, messages


def bare_verify(devices: list[TestDevice]) -> float:
    """CPU µs per verify: every device's own records, verified with its key."""
    jobs = []
    for dev in devices:
        key = nacl.signing.VerifyKey(dev.key.public_key)
        jobs += [(key, s.to_be_signed(), s.signature)
                 for s in (decode_sign1(r.raw) for r in dev.signed)]
    start = time.process_time()
    for key, message, signature in jobs:
        key.verify(message, signature)
    return _us(time.process_time() - start, len(jobs))


def parse(devices: list[TestDevice]) -> float:
    raws = [r.raw for dev in devices for r in dev.signed]
    start = time.process_time()
    for raw in raws:
        parse_signed_record(raw)
    return _us(time.process_time() - start, len(raws))


def one_round(devices: list[TestDevice], messages: list[tuple[str, bytes]],
              workdir: Path) -> tuple[float, float]:
    """(worker µs, sequencer µs) per record, on a fresh store."""
    store = SQLiteLogStore(workdir / "log.sqlite")
    try:
        for dev in devices:
            store.register_device(dev.name, dev.enrolled_key, "alice", RATE, NOW_MS)
        snapshots = {dev.device_id: store.device(dev.device_id) for dev in devices}
        key = GatewayKey.generate("bench.example/edgeproof")
        metrics = GatewayMetrics()
        checkpointer = Checkpointer(store, key, LocalAnchor(lambda: NOW_MS),
                                    config=CheckpointConfig(), metrics=metrics,
                                    wall_ms=lambda: NOW_MS, monotonic=time.monotonic)
        sequencer = Sequencer(store, checkpointer, key, limits=Limits(), metrics=metrics,
                              wall_ms=lambda: NOW_MS, monotonic=time.monotonic)
        limits = Limits()
        pickled: list[tuple[str, bytes]] = []
        settle_heap()
        start = time.process_time()
        for topic, payload in messages:
            device = snapshots[bytes.fromhex(topic.split("/")[3])]

            def lookup(kid: bytes, device: object = device) -> object:
                return device if kid == device.device_id else None  # type: ignore[attr-defined]

            prepared = prepare_batch(topic, payload, 0.0, limits, lookup)  # type: ignore[arg-type]
            pickled.append((topic, pickle.dumps(pack(prepared), pickle.HIGHEST_PROTOCOL)))
        worker = time.process_time() - start
        records = len(messages) * BATCH_RECORDS
        start = time.process_time()
        for first in range(0, len(pickled), GROUP):
            group = [unpack(topic, 0.0, pickle.loads(data))
                     for topic, data in pickled[first:first + GROUP]]
            receipts = sequencer.commit_group(group)
            assert all(r is not None for r in receipts)
        sequencer_s = time.process_time() - start
        assert store.size() == records, f"{store.size()} leaves of {records}"
        return _us(worker, records), _us(sequencer_s, records)
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200, help="of 100 records (default 200)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    devices, messages = make_batches(args.batches)
    log(f"{len(messages)} batches of {BATCH_RECORDS} records from {DEVICES} devices; "
        f"load average {load_start:.2f}")
    bare, parses, workers, sequencers = [], [], [], []
    for n in range(args.rounds):
        bare.append(bare_verify(devices))
        parses.append(parse(devices))
        with tempfile.TemporaryDirectory(prefix="stage-bench-") as tmp:
            worker, sequencer = one_round(devices, messages, Path(tmp))
        workers.append(worker)
        sequencers.append(sequencer)
        log(f"round {n + 1}: bare {bare[-1]} µs, parse {parses[-1]} µs, worker {worker} µs, "
            f"sequencer {sequencer} µs per record")
    best_bare, best_worker, best_seq = min(bare), min(workers), min(sequencers)
    result = {
        "bare_verify_us": best_bare,
        "parse_us": min(parses),
        "worker_us": best_worker,
        "worker_minus_verify_us": round(best_worker - best_bare, 2),
        "sequencer_us": best_seq,
        "total_us": round(best_worker + best_seq, 2),
        "ceiling_ratio_2_cores": round(2 * best_bare / (best_worker + best_seq), 3),
        "records": len(messages) * BATCH_RECORDS,
        "loadavg_1m_start": round(load_start, 2),
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
