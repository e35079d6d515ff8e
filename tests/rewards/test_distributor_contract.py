"""contracts/CumulativeMerkleDistributor.sol on a real ganache node, compiled by solcjs.

The trees come from :mod:`rewards.tree` (tested against @openzeppelin/merkle-tree itself in
test_tree_matches_openzeppelin.py); amounts are in token base units.
"""

from __future__ import annotations

import pytest

from osutil.jsonrpc import RpcError
from rewards import distributor as abi
from rewards.tree import DistributionTree
from tests.harness.solidity import Deployment, address_of
from tests.rewards.conftest import KEYS

TERMS = bytes(range(32))
COMPANY, OWNER_A, OWNER_B = (address_of(KEYS[n]) for n in ("company", "owner_a", "owner_b"))
STRANGER = address_of(KEYS["stranger"])


def funded_with_root(deployed: Deployment, amounts: dict[str, int],
                     funding: int = 10**21) -> DistributionTree:
    """Give the company tokens, fund the distributor, post the tree of ``amounts``."""
    deployed.give(COMPANY, funding)
    deployed.fund(KEYS["company"], funding, TERMS)
    tree = DistributionTree.build(list(amounts.items()))
    epoch = deployed.view(deployed.distributor, "epoch") + 1
    deployed.send(KEYS["gateway"], deployed.distributor,
                  abi.post_root(epoch, tree.root, sum(amounts.values())))
    return tree


def claim(deployed: Deployment, sender: str, tree: DistributionTree, account: str,
          amount: int | None = None) -> None:
    leaf = tree.leaf(account)
    deployed.send(KEYS[sender], deployed.distributor,
                  abi.claim(account, leaf.amount if amount is None else amount,
                            tree.proof(account)))


def test_claim_pays_the_owner_its_cumulative_amount(deployed: Deployment) -> None:
    tree = funded_with_root(deployed, {OWNER_A: 700, OWNER_B: 300})
    claim(deployed, "owner_a", tree, OWNER_A)
    assert deployed.balance(OWNER_A) == 700
    assert deployed.view(deployed.distributor, "claimed", OWNER_A) == 700
    assert deployed.balance(deployed.distributor) == 10**21 - 700


def test_claiming_twice_pays_once(deployed: Deployment) -> None:
    tree = funded_with_root(deployed, {OWNER_A: 700, OWNER_B: 300})
    claim(deployed, "owner_a", tree, OWNER_A)
    with pytest.raises(RpcError, match="revert") as caught:
        claim(deployed, "owner_a", tree, OWNER_A)
    assert caught.value.reverted
    assert deployed.balance(OWNER_A) == 700


def test_next_epoch_pays_only_the_difference(deployed: Deployment) -> None:
    tree = funded_with_root(deployed, {OWNER_A: 700, OWNER_B: 300})
    claim(deployed, "owner_a", tree, OWNER_A)
    later = DistributionTree.build([(OWNER_A, 1000), (OWNER_B, 300)])
    deployed.send(KEYS["gateway"], deployed.distributor, abi.post_root(2, later.root, 1300))
    claim(deployed, "owner_a", later, OWNER_A)
    assert deployed.balance(OWNER_A) == 1000


def test_forged_proof_reverts_and_pays_nothing(deployed: Deployment) -> None:
    tree = funded_with_root(deployed, {OWNER_A: 700, OWNER_B: 300})
    forged = [bytes(32), *tree.proof(OWNER_A)[1:]]
    with pytest.raises(RpcError, match="revert"):
        deployed.send(KEYS["owner_a"], deployed.distributor, abi.claim(OWNER_A, 700, forged))
    assert deployed.balance(OWNER_A) == 0


def test_inflated_amount_reverts_and_pays_nothing(deployed: Deployment) -> None:
    tree = funded_with_root(deployed, {OWNER_A: 700, OWNER_B: 300})
    with pytest.raises(RpcError, match="revert"):
        claim(deployed, "owner_a", tree, OWNER_A, amount=701)
    assert deployed.balance(OWNER_A) == 0


def test_another_owners_proof_cannot_pay_a_stranger(deployed: Deployment) -> None:
    tree = funded_with_root(deployed, {OWNER_A: 700, OWNER_B: 300})
    with pytest.raises(RpcError, match="revert"):
        deployed.send(KEYS["stranger"], deployed.distributor,
                      abi.claim(STRANGER, 700, tree.proof(OWNER_A)))
    assert deployed.balance(STRANGER) == 0


def test_claim_sent_by_someone_else_pays_the_owner(deployed: Deployment) -> None:
    tree = funded_with_root(deployed, {OWNER_A: 700, OWNER_B: 300})
    claim(deployed, "stranger", tree, OWNER_B)
    assert deployed.balance(OWNER_B) == 300
    assert deployed.balance(STRANGER) == 0


def test_root_posted_by_anyone_but_the_gateway_reverts(deployed: Deployment) -> None:
    tree = DistributionTree.build([(STRANGER, 10**21)])
    for sender in ("stranger", "issuer", "company"):
        with pytest.raises(RpcError, match="revert"):
            deployed.send(KEYS[sender], deployed.distributor, abi.post_root(1, tree.root, 0))
    assert deployed.view(deployed.distributor, "epoch") == 0


def test_root_whose_total_exceeds_the_funding_reverts(deployed: Deployment) -> None:
    deployed.give(COMPANY, 1000)
    deployed.fund(KEYS["company"], 1000, TERMS)
    tree = DistributionTree.build([(OWNER_A, 1001)])
    with pytest.raises(RpcError, match="revert"):
        deployed.send(KEYS["gateway"], deployed.distributor, abi.post_root(1, tree.root, 1001))
    assert deployed.view(deployed.distributor, "epoch") == 0


def test_epoch_that_does_not_increase_reverts(deployed: Deployment) -> None:
    tree = funded_with_root(deployed, {OWNER_A: 700})
    with pytest.raises(RpcError, match="revert"):
        deployed.send(KEYS["gateway"], deployed.distributor, abi.post_root(1, tree.root, 700))


def test_funding_is_recorded_per_funder_and_readable_as_events(deployed: Deployment) -> None:
    other = address_of(KEYS["other_company"])
    deployed.give(COMPANY, 5000)
    deployed.give(other, 2000)
    first = deployed.fund(KEYS["company"], 5000, TERMS)
    deployed.fund(KEYS["other_company"], 2000, bytes(32))
    assert deployed.view(deployed.distributor, "funded", COMPANY) == 5000
    assert deployed.view(deployed.distributor, "funded", other) == 2000
    assert deployed.view(deployed.distributor, "totalFunded") == 7000
    start = int(first["blockNumber"], 16)
    logs = deployed.rpc.logs(deployed.distributor, abi.FUNDED, start,
                             deployed.rpc.block_number())
    events = [abi.decode_funded(entry) for entry in logs]
    assert [(e.funder, e.terms, e.amount) for e in events] == [
        (COMPANY, TERMS, 5000), (other, bytes(32), 2000)]


def test_funding_without_allowance_reverts(deployed: Deployment) -> None:
    deployed.give(COMPANY, 5000)
    with pytest.raises(RpcError, match="revert"):
        deployed.send(KEYS["company"], deployed.distributor, abi.fund(5000, TERMS))
    assert deployed.view(deployed.distributor, "totalFunded") == 0
