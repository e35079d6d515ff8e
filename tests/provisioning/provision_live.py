"""A live fleet for the provisioning tests: the demo's private installation
(:class:`firmware_sim.stack.Stack`: a fleet made by ``init``, the real Mosquitto started with
the config ``broker-config`` wrote, the real gateway started with the config ``init`` wrote).

Helpers live here; conftest.py only exposes the fixtures.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_sim.broker import MosquittoBroker
from firmware_sim.procs import GatewayProcess
from firmware_sim.stack import Stack
from protocol.note import NoteVerifier
from provisioning import fleet as fleet_mod
from provisioning.broker import add_gateway_user
from provisioning.cli import main
from tests.harness.waiting import eventually
from tests.provisioning.provision_probe import Probe, connect

WATCHER_USER = "watcher"


def gateway_importable() -> bool:
    try:
        return importlib.util.find_spec("gateway.cli") is not None
    except ImportError:
        return False


def provision(*argv: str) -> int:
    """Run ``edgeproof-provision`` in-process; return its exit code."""
    return main(list(argv))


def init_fleet(root: Path, broker_port: int, gateway_port: int) -> None:
    code = provision("init", str(root), "--broker", f"mqtt://127.0.0.1:{broker_port}",
                     "--gateway", f"http://127.0.0.1:{gateway_port}", "--name", "test.fleet",
                     "--owner", "alice", "--rate", "1000000")
    assert code == 0


def set_fleet_option(root: Path, key: str, value: str) -> None:
    """Set a `[broker]` option in fleet.toml as an operator would, by editing the file."""
    path = root / fleet_mod.FLEET_FILE
    lines = path.read_text().splitlines()
    out = [f'{key} = "{value}"' if line.startswith(f"{key} =") else line for line in lines]
    path.write_text("\n".join(out) + "\n")


@dataclass
class LiveFleet:
    stack: Stack

    @property
    def root(self) -> Path:
        return self.stack.fleet_dir

    @property
    def broker(self) -> MosquittoBroker:
        return self.stack.broker

    @property
    def gateway(self) -> GatewayProcess:
        return self.stack.gateway

    @property
    def broker_dir(self) -> Path:
        return self.stack.broker_dir
    _watcher: tuple[str, str] | None = None

    @property
    def config(self) -> fleet_mod.FleetConfig:
        return fleet_mod.load_fleet(self.root)

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier.from_text(self.config.gateway_verifier_key)

    def gateway_password(self) -> str:
        return (self.root / fleet_mod.GATEWAY_BROKER_PASSWORD).read_text().strip()

    def watcher_login(self) -> tuple[str, str]:
        """A second broker user with the gateway's rights (as a second gateway worker would
        have), made on first use. The gateway's own login would be the gateway's session:
        the broker makes the user name the client id."""
        if self._watcher is None:
            password = secrets.token_urlsafe(18)
            cfg = self.config
            with fleet_mod.changing(cfg):
                add_gateway_user(cfg, WATCHER_USER, password)
            self._watcher = (WATCHER_USER, password)
        return self._watcher

    def run(self, *argv: str) -> int:
        return provision(*argv, "--fleet", str(self.root))


def live_fleet_fixture(tmp_path_factory: pytest.TempPathFactory,
                       broker_args: Callable[[Path], Sequence[str]] = lambda base: (),
                       ) -> Iterator[LiveFleet]:
    """A fleet with its broker (reloaded through a pid file) and its gateway running.

    ``broker_args(base_dir)`` returns extra ``broker-config`` arguments (e.g. TLS files).
    """
    if not gateway_importable():
        pytest.skip("the gateway package is not importable yet (gateway/ not built)")
    stack = Stack(tmp_path_factory.mktemp("live"), owner="alice", name="test.fleet",
                  rate_micro_per_hour=1_000_000, broker_args=broker_args)
    try:
        stack.start()
        yield LiveFleet(stack)
    finally:
        stack.close()


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def gateway_probe(live: LiveFleet, timeout: float = 30.0) -> Probe:
    """A client with the gateway's rights: a second gateway user, as a second gateway worker
    has (the gateway's own user would be the running gateway's session, since the broker
    makes the user name the client id). Retries while the broker applies the reload that
    added the user."""
    user, password = live.watcher_login()
    def accepted() -> Probe | None:
        probe = connect(live.broker.port, user, password, client_id=user)
        if probe.connack is not None and not probe.connack.is_failure:
            return probe
        probe.close()
        return None
    return eventually(accepted, f"the broker accepting {user}", timeout, every_s=0.05)
