"""Fixtures: a real gateway (in this process, on threads) against the real test broker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_sim.broker import MosquittoBroker
from gateway.config import load_config
from gateway.service import GatewayService
from tests.gateway.gwkit import DeviceClient, GatewayFiles, write_gateway_files


@dataclass
class RunningGateway:
    service: GatewayService
    files: GatewayFiles
    thread: threading.Thread
    errors: list[BaseException]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.service.http.port}"

    @property
    def verifier(self) -> str:
        return self.service.key.verifier_text()

    def stop(self) -> None:
        self.service.request_stop()
        self.thread.join(timeout=20)
        self.service.close()


def start_gateway(files: GatewayFiles) -> RunningGateway:
    service = GatewayService(load_config(files.config))
    service.start()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            service.run()
        except BaseException as exc:  # noqa: BLE001 - thread boundary; the teardown re-raises it
            errors.append(exc)

    thread = threading.Thread(target=run, name="gateway-sequencer", daemon=True)
    thread.start()
    return RunningGateway(service, files, thread, errors)


@pytest.fixture
def gateway(broker: MosquittoBroker, tmp_path: Path) -> Iterator[RunningGateway]:
    running = start_gateway(write_gateway_files(tmp_path / "gw", broker.port))
    try:
        yield running
    finally:
        running.stop()
    assert not running.errors, running.errors


@pytest.fixture
def devices(broker: MosquittoBroker, gateway: RunningGateway) -> Iterator[DeviceClient]:
    client = DeviceClient(broker.port, gateway.verifier)
    try:
        yield client
    finally:
        client.close()
