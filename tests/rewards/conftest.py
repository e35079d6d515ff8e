"""A real ganache node with named funded accounts, and the contracts deployed on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from eth_hash.auto import keccak

from firmware_sim.broker import MosquittoBroker
from firmware_sim.chain import ETHER, GanacheNode
from firmware_sim.solidity import Deployment
from protocol.keys import Secret, write_secret_file
from tests.gateway.conftest import RunningGateway, start_gateway
from tests.gateway.gwkit import write_gateway_files

NAMES = ("issuer", "gateway", "company", "other_company", "owner_a", "owner_b", "stranger")


def test_key(name: str) -> Secret:
    """A deterministic secp256k1 key for a named test account."""
    return Secret(bytes(keccak(b"edgeproof-rewards-test:" + name.encode())))


KEYS = {name: test_key(name) for name in NAMES}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GanacheNode]:
    accounts = tuple(("0x" + key.value.hex(), 1000 * ETHER) for key in KEYS.values())
    node = GanacheNode(Path(tmp_path_factory.mktemp("chain")), accounts=accounts)
    with node:
        yield node


@pytest.fixture
def deployed(chain: GanacheNode) -> Deployment:
    return Deployment.on(chain, KEYS["issuer"], KEYS["gateway"])


def payout_section(workdir: Path, chain: GanacheNode, deployed: Deployment,
                   extra: str = "", *, block: int | Literal["deployment"] | None = "deployment"
                   ) -> str:
    """A [payout] section posting to ``deployed`` every 0.2 s with the gateway's key (written
    to ``workdir``), and ``extra`` lines. Its ``distributor_block`` is ``deployed``'s (as
    ``edgeproof-gateway chain deploy`` writes it), ``block``, or with None left out (the
    epochs state none: the old document, read from block 0)."""
    key_file = workdir / "payout-eth.key"
    write_secret_file(key_file, KEYS["gateway"].value.hex().encode())
    stated = deployed.distributor_block if block == "deployment" else block
    return f"""
[payout]
rpc_url = "{chain.url}"
key_file = "{key_file}"
chain_id = {chain.chain_id}
distributor = "{deployed.distributor}"
interval_s = 0.2
{"" if stated is None else f"distributor_block = {stated}"}
{extra}"""


def running_payout_gateway(tmp_path: Path, broker: MosquittoBroker, chain: GanacheNode,
                           deployed: Deployment, *,
                           ungated: bool = False, extra_payout: str = "",
                           block: int | Literal["deployment"] | None = "deployment"
                           ) -> Iterator[RunningGateway]:
    """A gateway with a [payout] section posting to ``deployed`` every 0.2 s: consent-gated
    (the default), or with ``ungated`` in the explicit ``unsafe_ungated`` mode; ``block``:
    its ``distributor_block`` (:func:`payout_section`)."""
    extra = payout_section(tmp_path, chain, deployed,
                           ("unsafe_ungated = true\n" if ungated else "") + extra_payout,
                           block=block)
    running = start_gateway(write_gateway_files(tmp_path / "gw", broker.port, extra=extra,
                                                interval_s=0.2))
    try:
        yield running
    finally:
        running.stop()
    assert not running.errors, running.errors


@pytest.fixture
def payout_gateway(tmp_path: Path, broker: MosquittoBroker, chain: GanacheNode,
                   deployed: Deployment) -> Iterator[RunningGateway]:
    """Consent-gated payouts: the gateway's default."""
    yield from running_payout_gateway(tmp_path, broker, chain, deployed)


@pytest.fixture
def ungated_payout_gateway(tmp_path: Path, broker: MosquittoBroker, chain: GanacheNode,
                           deployed: Deployment) -> Iterator[RunningGateway]:
    """``unsafe_ungated = true``: every bound owner's settled credit, for the tests of the
    wallet side that are not about consent (gated payouts end to end: test_consent_gating)."""
    yield from running_payout_gateway(tmp_path, broker, chain, deployed, ungated=True)
