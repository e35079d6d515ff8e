"""The real gateway process on the PostgreSQL store: a device's records over the real broker
are logged in PostgreSQL, survive a kill -9 of the gateway, and the verifier verifies them."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from firmware_sim.broker import MosquittoBroker, free_port
from firmware_sim.procs import GatewayProcess
from gateway.pg_store import PostgresLogStore
from protocol.receipt import Status
from tests.gateway.gwkit import DeviceClient, TestDevice, batch_bytes, register, write_gateway_files
from tests.harness.waiting import eventually
from tests.pg import PostgresCluster
from verifier.cli import main as verify

REPO = Path(__file__).resolve().parents[2]


def _wait_for_checkpoint(base_url: str, size: int, timeout_s: float = 60.0) -> None:
    def covered() -> bool:
        response = httpx.get(f"{base_url}/v1/checkpoint")
        return response.status_code == 200 and int(response.text.split("\n")[1]) >= size
    eventually(covered, f"a checkpoint covering {size} records", timeout_s, every_s=0.1)


def test_gateway_on_postgresql_logs_records_across_kill9_and_they_verify(
        broker: MosquittoBroker, postgres: PostgresCluster, pg_database: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    http_port = free_port()
    files = write_gateway_files(
        tmp_path / "gw", broker.port, http_port=http_port, every_leaves=1, interval_s=0.3,
        extra=f'[store]\nbackend = "postgresql"\ndsn = "{postgres.dsn(pg_database)}"\n'
              f'password_file = "{postgres.password_file}"\n')
    gateway = GatewayProcess(files.config, f"http://127.0.0.1:{http_port}",
                             tmp_path / "gateway.log", cwd=REPO)
    gateway.start()
    client = DeviceClient(broker.port, files.key.verifier_text())
    try:
        device = TestDevice.create("pg-meter", 31)
        register(gateway.url, device)
        first = device.records(5)
        client.send(device, first, batch_id=1)
        receipt = client.wait_for(device.device_id, 1)
        assert [o.status for o in receipt.outcomes] == [Status.ACCEPTED] * 5
        assert [o.leaf_index for o in receipt.outcomes] == [0, 1, 2, 3, 4]

        second = device.records(3)
        client.send(device, second, batch_id=2)  # possibly in flight when the gateway dies
        assert gateway.kill() == -signal.SIGKILL
        gateway.start()
        answered = [r for r in list(client.receipts) if r.batch_id == 2]
        if not answered:
            client.publish(device.device_id, batch_bytes(second, 2))  # the device resends
        receipt = client.wait_for(device.device_id, 2)
        assert all(o.status in (Status.ACCEPTED, Status.DUPLICATE) for o in receipt.outcomes)
        assert [o.leaf_index for o in receipt.outcomes] == [5, 6, 7]
        _wait_for_checkpoint(gateway.url, 8)

        for leaf in (2, 6):
            assert verify(["record", "--gateway", gateway.url, "--leaf", str(leaf),
                           "--gateway-key", files.key.verifier_text()]) == 0
        assert "all requested checks passed" in capsys.readouterr().out
    finally:
        client.close()
        gateway.stop(timeout_s=30)

    # The log is in PostgreSQL (no SQLite file), whole and without duplicates.
    assert not (files.data_dir / "gateway.sqlite").exists()
    store = PostgresLogStore(postgres.dsn(pg_database), postgres.password)
    try:
        logged = [store.leaf(i) for i in range(store.size())]
        assert [x.raw for x in logged if x is not None] == first + second
        latest = store.latest_checkpoint()
        assert latest is not None
        assert latest.size == 8
    finally:
        store.close()
