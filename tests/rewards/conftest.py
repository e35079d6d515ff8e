"""A real ganache node with named funded accounts, and the contracts deployed on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_hash.auto import keccak

from protocol.keys import Secret
from tests.harness.chain import ETHER, GanacheNode
from tests.harness.solidity import Deployment

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
