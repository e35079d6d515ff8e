"""Three real gateway processes on one MQTT shared subscription over one PostgreSQL database:
kill -9 of the sequencer hands over to another process with no fork of the log, kill -9 of a
verifying process loses nothing, and every record is logged exactly once."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from firmware_sim.broker import MosquittoBroker
from firmware_sim.procs import GatewayProcess
from gateway.pg_store import PostgresLogStore
from protocol.note import NoteVerifier
from tests.gateway.clusterkit import Cluster, checkpoint_size, wait
from tests.gateway.crashkit import Publisher, answered, check_receipts, resend_unanswered
from tests.gateway.gwkit import DeviceClient, TestDevice, check_checkpoints, register
from tests.pg import PostgresCluster

ROUNDS = 3  # hand-overs by kill -9 (then one by SIGTERM)


def test_kill9_of_sequencer_or_verifier_forks_nothing_and_loses_nothing(
        broker: MosquittoBroker, postgres: PostgresCluster, pg_database: str,
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, broker.port, postgres, pg_database, size=3)
    cluster.start()
    client = DeviceClient(broker.port, cluster.key.verifier_text())
    notes: set[str] = set()
    try:
        first = cluster.sequencer()
        fleet = [TestDevice.create(f"shared-{i}", 300 + i) for i in range(3)]
        for dev in fleet:
            register(first.url, dev)
        publisher = Publisher(client, fleet)
        publisher.burst(10)  # spread over the three processes by the shared subscription
        _wait_all_answered(client, publisher)
        # The others verified their share and handed it to the sequencer via the database.
        assert sum(_handed_over(g) for g in cluster.gateways if g is not first) > 0

        sequencer = first
        for _ in range(ROUNDS):
            # kill -9 of the sequencer while a burst is in flight: another one takes over.
            publisher.burst(10)
            notes.update(_notes(sequencer))
            assert sequencer.kill() == -signal.SIGKILL
            successor = cluster.sequencer()
            assert successor is not sequencer
            # kill -9 of a process that only verifies, in the middle of a burst.
            verifier = next(g for g in cluster.gateways if g.running and g is not successor)
            publisher.burst(10)
            assert verifier.kill() == -signal.SIGKILL
            sequencer.start()  # systemd restarts both; their MQTT sessions hold what they had
            verifier.start()
            sequencer = successor
        # A graceful stop hands over too (final checkpoint, exit 0, the lock released).
        notes.update(_notes(sequencer))
        assert sequencer.stop(timeout_s=30) == 0
        last = cluster.sequencer()
        signed_before = checkpoint_size(last)  # nothing larger can come from the others
        sequencer.start()
        publisher.burst(2)  # records that only the last sequencer can log and sign
        resend_unanswered(client, publisher)
        _wait_all_answered(client, publisher)
        leaf_of = check_receipts(client, publisher, notes)
        wait("a checkpoint of the whole log from the last sequencer",
              lambda: checkpoint_size(last) >= len(leaf_of) > signed_before)
        notes.update(_notes(last))
        check_checkpoints(last.url, NoteVerifier.from_text(cluster.key.verifier_text()),
                          notes)
    finally:
        client.close()
        cluster.stop()
    _check_log(postgres, pg_database, publisher.sent, leaf_of)


def _handed_over(gateway: GatewayProcess) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    name = "edgeproof_gateway_batches_handed_over_total "
    lines = [x for x in text.splitlines() if x.startswith(name)]
    return float(lines[0].split()[1]) if lines else 0.0


def _notes(gateway: GatewayProcess) -> set[str]:
    return {c["note"] for c in httpx.get(f"{gateway.url}/v1/checkpoints",
                                         params={"limit": 1000}).json()}


def _wait_all_answered(client: DeviceClient, publisher: Publisher) -> None:
    wait("a receipt for every batch", lambda: set(publisher.sent) <= answered(client))


def _check_log(postgres: PostgresCluster, dbname: str,
               sent: dict[tuple[bytes, int], list[bytes]], leaf_of: dict[bytes, int]) -> None:
    store = PostgresLogStore(postgres.dsn(dbname), postgres.password, shared=True)
    try:
        size = store.size()
        logged = [leaf.raw for leaf in (store.leaf(i) for i in range(size)) if leaf is not None]
        queued = store_pending_count(postgres, dbname)
    finally:
        store.close()
    assert len(logged) == size  # no hole
    assert len(set(logged)) == len(logged)  # nothing duplicated
    assert sorted(logged) == sorted(raw for records in sent.values() for raw in records)
    assert all(logged[index] == raw for raw, index in leaf_of.items())  # receipts were true
    assert queued == 0  # nothing left behind in the hand-over queue


def store_pending_count(postgres: PostgresCluster, dbname: str) -> int:
    rows = postgres.execute_as_admin(dbname, "SELECT COUNT(*) FROM pending", ())
    return int(str(rows[0][0]))
