"""Gateway processes of one shared log (tests/gateway/test_gateway_failover.py,
tests/gateway/test_gateway_shared_duties.py): one directory, HTTP port and MQTT client id
each, the same gateway key, the same PostgreSQL database and MQTT shared subscription."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx

from firmware_sim.broker import free_port
from firmware_sim.procs import GatewayProcess
from tests.gateway.gwkit import write_gateway_files
from tests.harness.waiting import eventually
from tests.pg import PostgresCluster

REPO = Path(__file__).resolve().parents[2]
GROUP = "edgeproof-gateways"
WAIT_S = 60.0  # a bound for a loaded machine; every wait returns as soon as its condition holds


def wait(what: str, condition: Callable[[], object], timeout_s: float = WAIT_S) -> None:
    eventually(condition, what, timeout_s, every_s=0.05)


def role(gateway: GatewayProcess) -> str | None:
    """What the process says it is (/healthz): sequencer or verifier; None if it is down."""
    if not gateway.running:
        return None
    try:
        return str(httpx.get(f"{gateway.url}/healthz", timeout=2).json()["role"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def checkpoint_size(gateway: GatewayProcess) -> int:
    response = httpx.get(f"{gateway.url}/v1/checkpoint", timeout=5)
    return int(response.text.split("\n")[1]) if response.status_code == 200 else -1


class Cluster:
    """Gateway processes of one log: own directory, HTTP port and MQTT client id each, the
    same gateway key (copied, mode 0600), the same database and shared subscription;
    ``extra`` is more configuration for every process (an ``[anchor]`` section)."""

    def __init__(self, root: Path, broker_port: int, postgres: PostgresCluster,
                 dbname: str, size: int, extra: str = "") -> None:
        store = (f'[store]\nbackend = "postgresql"\ndsn = "{postgres.dsn(dbname)}"\n'
                 f'password_file = "{postgres.password_file}"\nshared = true\n')
        self.gateways: list[GatewayProcess] = []
        key_file: Path | None = None
        for i in range(size):
            directory = root / f"gw{i}"
            if key_file is not None:
                directory.mkdir(parents=True)
                shutil.copy2(key_file, directory / "gateway.key")
            port = free_port()
            files = write_gateway_files(
                directory, broker_port, http_port=port, every_leaves=50, interval_s=0.3,
                extra=store + extra, client_id=f"edgeproof-gateway-{i}",
                broker_extra=f'shared_group = "{GROUP}"')
            key_file, self.key = directory / "gateway.key", files.key
            self.gateways.append(GatewayProcess(files.config, f"http://127.0.0.1:{port}",
                                                root / f"gateway{i}.log", cwd=REPO))

    def start(self) -> None:
        for gateway in self.gateways:
            gateway.start()

    def roles(self) -> list[str | None]:
        return [role(g) for g in self.gateways]

    def sequencer(self) -> GatewayProcess:
        """The one process that says it sequences (waits until exactly one does)."""
        wait("exactly one sequencer", lambda: self.roles().count("sequencer") == 1)
        return self.gateways[self.roles().index("sequencer")]

    def stop(self) -> None:
        for gateway in self.gateways:
            gateway.stop(timeout_s=30)
