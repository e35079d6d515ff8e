"""rewards.tree against @openzeppelin/merkle-tree itself (the npm package, run by node).

Seeded random distributions of several sizes (odd, even, one leaf, amounts up to 2**256-1):
the root, every proof and the whole JSON dump must be identical; a dump the package wrote
loads into rewards.tree; a proof that does not lead to the root is refused by raising.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from typing import Any

import pytest

from protocol.errors import VerificationError
from rewards.tree import MAX_UINT256, DistributionTree, checked_address, verify_claim
from tests.harness.chain import REPO_ROOT

MODULES = REPO_ROOT / ".tools" / "node_modules"


def reference(values: list[tuple[str, int]]) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None, "node is missing: make chain"
    done = subprocess.run([node, str(REPO_ROOT / "tests" / "rewards" / "oz_tree.js"),
                           str(MODULES)], input=json.dumps([[a, str(n)] for a, n in values]),
                          capture_output=True, text=True, check=True, timeout=120)
    answer = json.loads(done.stdout)
    assert isinstance(answer, dict)
    return answer


def random_values(rng: random.Random, count: int) -> list[tuple[str, int]]:
    amounts = [0, 1, MAX_UINT256, 10**18]
    values = []
    for i in range(count):
        address = checked_address("0x" + rng.randbytes(20).hex())
        amount = amounts[i] if i < len(amounts) and count > 8 else rng.randrange(10**30)
        values.append((address, amount))
    return values


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 17, 64, 301])
def test_root_proofs_and_dump_are_those_of_openzeppelin(count: int) -> None:
    values = random_values(random.Random(count), count)
    ours = DistributionTree.build(values)
    theirs = reference(values)
    assert "0x" + ours.root.hex() == theirs["root"]
    assert [["0x" + p.hex() for p in ours.proof(a)] for a, _ in values] == theirs["proofs"]
    assert ours.dump() == theirs["dump"]


def test_dump_written_by_openzeppelin_loads_with_the_same_root() -> None:
    values = random_values(random.Random(7), 9)
    theirs = reference(values)
    loaded = DistributionTree.load(json.dumps(theirs["dump"]))
    assert "0x" + loaded.root.hex() == theirs["root"]


def test_dump_with_a_tampered_amount_is_refused() -> None:
    dump = DistributionTree.build(random_values(random.Random(8), 5)).dump()
    dump["values"][0]["value"][1] = str(int(dump["values"][0]["value"][1]) + 1)
    with pytest.raises(VerificationError, match="not the tree"):
        DistributionTree.load(json.dumps(dump))


def test_inflated_amount_or_another_leafs_proof_is_refused() -> None:
    values = random_values(random.Random(9), 6)
    tree = DistributionTree.build(values)
    (first, amount), (second, _) = values[0], values[1]
    verify_claim(tree.root, first, amount, tree.proof(first))
    with pytest.raises(VerificationError, match="does not lead"):
        verify_claim(tree.root, first, amount + 1, tree.proof(first))
    with pytest.raises(VerificationError, match="does not lead"):
        verify_claim(tree.root, first, amount, tree.proof(second))


def test_repeated_address_or_empty_distribution_is_refused() -> None:
    address = checked_address("0x" + "11" * 20)
    with pytest.raises(ValueError, match="more than once"):
        DistributionTree.build([(address, 1), (address.lower(), 2)])
    with pytest.raises(ValueError, match="at least one"):
        DistributionTree.build([])


def test_committed_vector_is_still_the_tree_built() -> None:
    vector = json.loads((REPO_ROOT / "tests" / "vectors" / "distribution_tree.json").read_text())
    values = [(a, int(n)) for a, n in vector["values"]]
    tree = DistributionTree.build(values)
    assert "0x" + tree.root.hex() == vector["root"]
    assert [["0x" + p.hex() for p in tree.proof(a)] for a, _ in values] == vector["proofs"]
    assert tree.dump() == vector["dump"]
