"""Scale benchmark: one gateway process, two over PostgreSQL, and the sequencer's failover.

1. ``one_process_ratio``: one gateway process on the SQLite store drains a backlog preloaded
   into a private Mosquitto (bench/gateway_bench.py's drain, first receipt to last), divided
   by bare single-core Ed25519 verifies per second measured in the same run.
   ``one_process_share_of_two_cores``: the same records/s divided by what two processes
   verifying at the same time deliver together (``one_two_cores_bare_verify_per_s``,
   measured before and after the drain), and ``two_cores_scaling``, that figure over one
   core's: 2.0 on two idle cores, less on a VM whose two vCPUs slow each other. The goal
   of 1.2 assumes 2.0; these say how much of the machine's real two-core rate was used.
2. ``pg_two_process_ratio``: two gateway processes with ``[store] shared = true`` on a private
   PostgreSQL cluster (fsync on) and one MQTT shared subscription drain a preloaded backlog;
   one sequences, both verify (gateway/cluster.py). Records/s from the first receipt to the
   last, divided by the bare verify rate measured just before and just after (and, as
   ``pg_two_process_share_of_two_cores``, by the two-process bare rate measured so).
   Both drains also print ``*_ratio_middle_80``: the same division with the rate between
   the receipts at 10 % and 90 % of the drain, without the pipeline filling and running dry
   (a large share of a drain that lasts two to four seconds). Where the pair's CPU goes,
   in µs a record from the first receipt to the last (/proc, 10 ms ticks), everything on
   the one machine: ``pg_gateways_cpu_us`` (both gateway processes), ``pg_workers_cpu_us``
   (their verify workers), ``pg_server_cpu_us`` (every PostgreSQL process) and
   ``pg_broker_cpu_us``; two cores give 2e6 ÷ ``pg_bare_verify_per_s`` µs a record at
   a ratio of 1.0.
3. ``pg_sequencer_records_per_s``: where the single sequencer's limit lies: one process drains
   a hand-over queue of batches already verified (from its first commit to its last).
4. ``failover_s``: the two processes run under a steady load; the sequencer is killed with
   SIGKILL; from the kill until a checkpoint signed after the killed process was reaped
   (``issued_ms``, same machine clock) is in the database: only the other process can have
   signed it. Then the killed process is started again (as systemd does) and the devices
   resend what has no receipt every 5 s for up to 60 s (as real devices do); then the log
   is read: ``lost`` = records sent but not logged, ``duplicated`` = leaves holding the
   same record twice.

Prints progress to stderr and ends with ONE line of JSON on stdout (with the 1-minute load
average at the start and the end: other work may share the machine). Never asserts.
Run: ``python bench/scale_bench.py [--records 60000] [--devices 40]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gateway_bench import (  # noqa: E402
    BATCH_RECORDS,
    ReceiptCounter,
    backlog_fits,
    bare_verify_rate,
    bare_verify_rate_two_cores,
    cpu_seconds,
    drain,
    middle_rate,
)
from firmware_sim.broker import MosquittoBroker, free_port  # noqa: E402
from firmware_sim.procs import GatewayProcess  # noqa: E402
from gateway.cluster import pending_batch  # noqa: E402
from gateway.config import Limits  # noqa: E402
from gateway.pg_store import PostgresLogStore  # noqa: E402
from gateway.verify import prepare_batch  # noqa: E402
from protocol.batch import Batch, records_topic  # noqa: E402
from tests.gateway.gwkit import (  # noqa: E402
    DeviceClient,
    TestDevice,
    batch_bytes,
    register,
    write_gateway_files,
)
from tests.pg import PostgresCluster, start_cluster  # noqa: E402

GROUP = "edgeproof-gateways"
LOAD_BATCH_RECORDS = 10
LOAD_INTERVAL_S = 0.02  # one batch of 10 records every 20 ms during the failover: 500 rec/s
RESEND_S = 5.0  # the bench's devices resend a batch without a receipt this often


def log(message: str) -> None:
    print(f"[scale_bench] {message}", file=sys.stderr, flush=True)


def shared_gateways(workdir: Path, broker_port: int, cluster: PostgresCluster,
                    dbname: str, count: int) -> list[GatewayProcess]:
    """``count`` gateway processes of one log: one key (copied), one database, one group."""
    store = (f'[store]\nbackend = "postgresql"\ndsn = "{cluster.dsn(dbname)}"\n'
             f'password_file = "{cluster.password_file}"\nshared = true\n')
    gateways, key_file = [], None
    for i in range(count):
        directory = workdir / f"gw{i}"
        if key_file is not None:
            directory.mkdir(parents=True)
            shutil.copy2(key_file, directory / "gateway.key")
        port = free_port()
        files = write_gateway_files(directory, broker_port, http_port=port, every_leaves=1000,
                                    interval_s=1.0, extra=store,
                                    client_id=f"edgeproof-gateway-{i}",
                                    broker_extra=f'shared_group = "{GROUP}"')
        key_file = directory / "gateway.key"
        gateways.append(GatewayProcess(files.config, f"http://127.0.0.1:{port}",
                                       workdir / f"gateway{i}.log",
                                       extra_args=("--log-level", "WARNING"), cwd=REPO))
    return gateways


def role(gateway: GatewayProcess) -> str | None:
    try:
        return str(httpx.get(f"{gateway.url}/healthz", timeout=2).json()["role"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def _metric(gateway: GatewayProcess, name: str) -> float:
    for _ in range(100):  # the gateway may still be starting its HTTP server
        try:
            text = httpx.get(f"{gateway.url}/metrics", timeout=2).text
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        return float("nan")
    lines = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(lines[0].split()[1]) if lines else 0.0


def publish_all(port: int, payloads: list[tuple[bytes, bytes]]) -> None:
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-devices",
                            protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    infos = [publisher.publish(records_topic(d), p, qos=1) for d, p in payloads]
    for info in infos:
        info.wait_for_publish(60)
    publisher.loop_stop()
    publisher.disconnect()


def pg_pair(workdir: Path, n_records: int, n_devices: int) -> dict[str, float]:
    cluster = start_cluster(durable=True)
    dbname = cluster.create_database()
    broker = MosquittoBroker(workdir / "broker", max_queued_messages=1_000_000)
    broker.start()
    gateways = shared_gateways(workdir, broker.port, cluster, dbname, 2)
    try:
        for gateway in gateways:
            gateway.start()  # creates the persistent sessions of the shared subscription
        fleet = [TestDevice.create(f"scale-{i}", 2000 + i) for i in range(n_devices)]
        for dev in fleet:
            register(gateways[0].url, dev)
        for gateway in gateways:
            gateway.stop(timeout_s=60)
        result = _drain_pair(broker.port, gateways, fleet, n_records,
                             (cluster.server_pid, broker.process.pid if broker.process else None))
        result.update(_failover(broker.port, gateways, fleet, cluster, dbname))
        for gateway in gateways:
            gateway.stop(timeout_s=60)
        result.update(_sequencer_only(gateways[0], fleet, cluster, dbname, n_records))
        return result
    finally:
        for gateway in gateways:
            gateway.stop(timeout_s=60)
        broker.kill()
        cluster.stop()


def _cpu(gateways: list[GatewayProcess], others: tuple[int | None, int | None]
         ) -> tuple[float, float, float, float]:
    """CPU seconds so far of the gateway processes, their verify workers, the PostgreSQL
    server (the postmaster and every backend) and the broker."""
    mains = workers = 0.0
    for gateway in gateways:
        assert gateway.pid is not None
        own, children = cpu_seconds(gateway.pid)
        mains, workers = mains + own, workers + children
    server, broker = (sum(cpu_seconds(pid)) if pid is not None else 0.0 for pid in others)
    return mains, workers, server, broker


def _drain_pair(port: int, gateways: list[GatewayProcess], fleet: list[TestDevice],
                n_records: int, others: tuple[int | None, int | None]) -> dict[str, float]:
    payloads: list[tuple[bytes, bytes]] = []
    for dev in fleet:
        for batch_id in range(n_records // len(fleet) // BATCH_RECORDS):
            payloads.append((dev.device_id,
                             Batch(batch_id + 1, tuple(dev.records(BATCH_RECORDS))).to_cbor()))
    random.Random(2).shuffle(payloads)
    total = len(payloads) * BATCH_RECORDS
    counter = ReceiptCounter(port)
    counter.expected = len(payloads)
    publish_all(port, payloads)
    sample = list(Batch.from_cbor(payloads[0][1]).records)
    key = next(d.enrolled_key for d in fleet if d.device_id == payloads[0][0])
    bare_before = bare_verify_rate(sample, key)
    two_cores_before = bare_verify_rate_two_cores(sample, key)
    log(f"preloaded {len(payloads)} batches ({total} records); starting two gateways")
    for gateway in gateways:
        gateway.spawn()
    while counter.first is None and not counter.done.wait(0.005):
        pass  # CPU from the first receipt on, as bench/gateway_bench.py's drain
    cpu_start = _cpu(gateways, others)
    counter.done.wait(600)
    cpu_end = _cpu(gateways, others)
    first = counter.first or counter.last
    rate = (total - BATCH_RECORDS) / max(counter.last - first, 1e-9)
    middle = middle_rate(counter.times, BATCH_RECORDS)
    bare = (bare_before + bare_verify_rate(sample, key)) / 2
    two_cores = (two_cores_before + bare_verify_rate_two_cores(sample, key)) / 2
    counter.client.loop_stop()
    counter.client.disconnect()
    shares = [_metric(g, "edgeproof_gateway_batches_handed_over_total") for g in gateways]
    for gateway in gateways:  # the failover phase starts them afresh
        gateway.stop(timeout_s=60)
    log(f"two processes: {rate:.0f} records/s, bare verify {bare:.0f}/s, "
        f"{len(counter.payloads)} of {len(payloads)} receipts; batches handed over to the "
        f"sequencer by each: {shares}")
    drained = total - BATCH_RECORDS
    mains_us, workers_us, server_us, broker_us = (round((end - begin) * 1e6 / drained, 1)
                                                  for begin, end in zip(cpu_start, cpu_end,
                                                                        strict=True))
    log(f"CPU µs a record (both processes together): gateways {mains_us}, their verify "
        f"workers {workers_us}, PostgreSQL {server_us}, broker {broker_us}; one bare "
        f"verify {1e6 / bare:.1f}")
    return {"pg_gateways_cpu_us": mains_us, "pg_workers_cpu_us": workers_us,
            "pg_server_cpu_us": server_us, "pg_broker_cpu_us": broker_us,
            "pg_two_process_records_per_s": rate, "pg_bare_verify_per_s": bare,
            "pg_two_process_ratio": rate / bare, "pg_two_process_ratio_middle_80": middle / bare,
            "pg_records": total, "pg_two_cores_bare_verify_per_s": two_cores,
            "pg_two_process_share_of_two_cores": rate / two_cores}


class Load:
    """Devices sending a batch of 10 records every 20 ms, each device's batches in order."""

    def __init__(self, client: DeviceClient, fleet: list[TestDevice], first_id: int) -> None:
        self.client, self.fleet = client, fleet
        self.sent: dict[tuple[bytes, int], list[bytes]] = {}
        self._next_id, self._stop = first_id, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(LOAD_INTERVAL_S):
            dev = self.fleet[self._next_id % len(self.fleet)]
            records = dev.records(LOAD_BATCH_RECORDS)
            self.sent[(dev.device_id, self._next_id)] = records
            self.client.send(dev, records, self._next_id)
            self._next_id += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _answered(client: DeviceClient) -> set[tuple[bytes, int]]:
    return {(r.device_id, r.batch_id) for r in list(client.receipts)}


def _resend_until_answered(client: DeviceClient,
                           sent: dict[tuple[bytes, int], list[bytes]]) -> None:
    """What devices do: resend every batch without a receipt, every RESEND_S, for 60 s."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not set(sent) <= _answered(client):
        answered = _answered(client)
        for (device_id, batch_id), records in sorted(sent.items()):
            if (device_id, batch_id) not in answered:
                client.publish(device_id, batch_bytes(records, batch_id))
        wait_until = time.monotonic() + RESEND_S
        while time.monotonic() < wait_until and not set(sent) <= _answered(client):
            time.sleep(0.05)


def _signed_after(cluster: PostgresCluster, dbname: str, wall_ms: int) -> bool:
    """Whether a checkpoint was signed after ``wall_ms`` (by a live process: the killed one
    stamped its last one before it died, even if the server committed it a moment later)."""
    rows = cluster.execute_as_admin(dbname, "SELECT COUNT(*) FROM checkpoints "
                                    "WHERE issued_ms > %s", (wall_ms,))
    return int(str(rows[0][0])) > 0


def _failover(port: int, gateways: list[GatewayProcess], fleet: list[TestDevice],
              cluster: PostgresCluster, dbname: str) -> dict[str, float]:
    for gateway in gateways:
        gateway.start()
    client = DeviceClient(port, _verifier_text(gateways[0]), client_id="bench-load")
    load = Load(client, fleet, first_id=1_000_000)
    load.start()
    time.sleep(2.0)  # a steady state before the kill
    leader = next(g for g in gateways if role(g) == "sequencer")
    assert leader.running, "the sequencer to kill is not the bench's child"
    killed_at = time.monotonic()
    leader.kill()
    killed_wall_ms = time.time_ns() // 1_000_000  # reaped: it signs nothing after this
    while not _signed_after(cluster, dbname, killed_wall_ms) \
            and time.monotonic() - killed_at < 60:
        time.sleep(0.01)
    failover = time.monotonic() - killed_at
    log(f"failover: {failover:.2f} s from kill -9 to the next checkpoint")
    time.sleep(1.0)
    load.stop()
    # systemd restarts the killed process (Restart=): its MQTT session kept the messages
    # the broker gave it, and, until it is back, its share of new ones (Mosquitto).
    leader.start()
    _resend_until_answered(client, load.sent)
    client.close()
    lost, duplicated = _count_log(cluster, dbname, load.sent)
    log(f"failover load: {sum(len(r) for r in load.sent.values())} records sent, "
        f"lost {lost}, duplicated {duplicated}")
    return {"failover_s": failover, "lost": lost, "duplicated": duplicated}


def _sequencer_only(gateway: GatewayProcess, fleet: list[TestDevice],
                    cluster: PostgresCluster, dbname: str, n_records: int) -> dict[str, float]:
    """The sequencer's own limit: one process drains a hand-over queue of verified batches."""
    store = PostgresLogStore(cluster.dsn(dbname), cluster.password, shared=True)
    try:
        limits = Limits()
        rows = []
        for dev in fleet:
            for batch_id in range(n_records // len(fleet) // BATCH_RECORDS):
                payload = Batch(2_000_000 + batch_id, tuple(dev.records(BATCH_RECORDS))).to_cbor()
                topic = records_topic(dev.device_id)
                rows.append(pending_batch(prepare_batch(topic, payload, 0.0, limits,
                                                        store.device), payload))
        store.enqueue(rows, 0)
        before = store.size()
        total = len(rows) * BATCH_RECORDS
        log(f"queued {len(rows)} verified batches; one process sequences them")
        started = time.monotonic()
        gateway.spawn()
        first_size, first_at = before, started
        while (size := store.size()) < before + total and time.monotonic() - started < 600:
            if first_size == before and size > before:  # the first group committed
                first_size, first_at = size, time.monotonic()
            time.sleep(0.01)
        elapsed = time.monotonic() - first_at
    finally:
        store.close()
    rate = (before + total - first_size) / max(elapsed, 1e-9)  # from the first commit on
    log(f"sequencer alone: {rate:.0f} records/s")
    return {"pg_sequencer_records_per_s": rate}  # ÷ pg_bare_verify_per_s in main()


def _verifier_text(gateway: GatewayProcess) -> str:
    return httpx.get(f"{gateway.url}/v1/verifier-key", timeout=5).text.strip()


def _count_log(cluster: PostgresCluster, dbname: str,
               sent: dict[tuple[bytes, int], list[bytes]]) -> tuple[int, int]:
    store = PostgresLogStore(cluster.dsn(dbname), cluster.password, shared=True)
    try:
        logged = [leaf.raw for leaf in (store.leaf(i) for i in range(store.size()))
                  if leaf is not None]
    finally:
        store.close()
    present = set(logged)
    lost = sum(1 for records in sent.values() for raw in records if raw not in present)
    return lost, len(logged) - len(present)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--devices", type=int, default=40)
    args = parser.parse_args()
    backlog_fits(args.records, args.devices)
    load_start = os.getloadavg()[0]  # the machine is shared: the ratios are what compares
    sampler = TestDevice.create("bare-sample", 9999)
    sample, key = sampler.records(BATCH_RECORDS), sampler.enrolled_key
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        two_cores_before = bare_verify_rate_two_cores(sample, key)
        one = drain(Path(tmp) / "one", args.records, args.devices, None)
        two_cores = (two_cores_before + bare_verify_rate_two_cores(sample, key)) / 2
        result: dict[str, float] = {
            "one_process_records_per_s": one["records_per_s"],
            "one_bare_verify_per_s": one["bare_verify_per_s"],
            "one_process_ratio": one["records_per_s"] / one["bare_verify_per_s"],
            "one_process_ratio_middle_80": (one["records_per_s_middle_80"]
                                            / one["bare_verify_per_s"]),
            "one_two_cores_bare_verify_per_s": two_cores,
            "one_process_share_of_two_cores": one["records_per_s"] / two_cores,
            "two_cores_scaling": two_cores / one["bare_verify_per_s"]}
        result.update(pg_pair(Path(tmp) / "pg", args.records, args.devices))
    result["pg_sequencer_ratio"] = (result["pg_sequencer_records_per_s"]
                                    / result["pg_bare_verify_per_s"])
    result["loadavg_1m_start"], result["loadavg_1m_end"] = load_start, os.getloadavg()[0]
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                      for k, v in result.items()}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
