"""A private Ethereum node (ganache) on a free loopback port, for tests and the demo .

It runs the real ``ganache`` npm package (installed into ``.tools/node_modules`` by
``scripts/ensure-ganache.sh``, i.e. ``make chain``) with its database in its own directory,
so the node can be stopped, killed and started again on the same port with the same chain
(blocks, balances, nonces). Accounts are deterministic: either funded private keys given by
the caller (``--wallet.accounts``) or ganache's accounts derived from a fixed seed.

Pending transactions live only in ganache's memory: a restart forgets them (the way a
real node can drop a transaction), while mined blocks survive in ``--database.dbPath``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from firmware_sim.broker import free_port
from firmware_sim.procs import signal_and_wait
from osutil.deathsig import die_with_parent

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHAIN_ID = 1337
ETHER = 10**18


def ganache_binary() -> str:
    """Return the ganache executable, or raise RuntimeError saying how to install it.

    Looks at ``$EDGEPROOF_GANACHE``, then the repo's ``.tools/node_modules/.bin``, then PATH.
    """
    candidates = [os.environ.get("EDGEPROOF_GANACHE"),
                  str(REPO_ROOT / ".tools" / "node_modules" / ".bin" / "ganache"),
                  shutil.which("ganache")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("ganache not found; install it with: make chain "
                       "(scripts/ensure-ganache.sh)")


class RpcFailure(RuntimeError):
    """The node answered a JSON-RPC call with an error object."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        super().__init__(f"{method}: {error.get('message', error)}")
        self.error = error


@dataclass
class GanacheNode:
    """One ganache process with its own database directory and port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    chain_id: int = DEFAULT_CHAIN_ID
    # Funded accounts as (0x-prefixed private key, balance in wei); empty = seeded accounts.
    accounts: tuple[tuple[str, int], ...] = ()
    seed: str = "edgeproof-test-chain"
    block_time_s: float = 0.0  # 0 = instamine: every transaction is mined at once
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.workdir / "db"

    def command(self) -> list[str]:
        """The ganache command line for the current settings."""
        args = [ganache_binary(), "--server.host", "127.0.0.1", "--server.port", str(self.port),
                "--chain.chainId", str(self.chain_id), "--database.dbPath", str(self.db_path),
                "--miner.blockTime", f"{self.block_time_s:g}", "--logging.quiet"]
        if self.accounts:
            for key, balance in self.accounts:
                args += ["--wallet.accounts", f"{key},{balance}"]
        else:
            args += ["--wallet.seed", self.seed]
        return args

    def start(self, timeout: float = 60.0) -> None:
        """Start the node and wait until it answers ``eth_chainId``."""
        if self.process is not None and self.process.poll() is None:
            return
        self.db_path.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "ganache.log", "ab")  # noqa: SIM115 - kept open for the child
        self.process = subprocess.Popen(  # noqa: S603 - the pinned ganache, our arguments
            self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            start_new_session=True,
            # A demo killed with SIGKILL must not leave its node running (as the broker).
            preexec_fn=die_with_parent)  # noqa: PLW1509 - only prctl, before exec
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.workdir / "ganache.log").read_text(errors="replace")[-800:]
                raise RuntimeError(f"ganache exited at start: {tail}")
            if self._answers():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"ganache did not answer on port {self.port}")

    def _answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(
            ("127.0.0.1", self.port), timeout=0.2
        ):
            try:
                return int(self.rpc("eth_chainId"), 16) == self.chain_id
            except (requests.RequestException, RpcFailure):
                return False
        return False

    def stop(self) -> None:
        """Stop gracefully (SIGTERM): ganache closes its database; pending txs are lost."""
        self._signal_and_wait(signal.SIGTERM)

    def kill(self) -> None:
        """Kill -9."""
        self._signal_and_wait(signal.SIGKILL)

    def _signal_and_wait(self, sig: int) -> None:
        if self.process is not None:
            signal_and_wait(self.process, sig, timeout_s=20)
        self.process = None

    def rpc(self, method: str, *params: object, timeout: float = 10.0) -> Any:
        """Call one JSON-RPC method; return its result or raise RpcFailure."""
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        answer = requests.post(self.url, json=body, timeout=timeout).json()
        if "error" in answer:
            raise RpcFailure(method, answer["error"])
        return answer.get("result")

    def __enter__(self) -> GanacheNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
