"""OpenZeppelin's standard Merkle tree for leaf encoding ``["address", "uint256"]``.

Byte for byte what ``StandardMerkleTree.of(values, ["address", "uint256"])`` of the npm
package ``@openzeppelin/merkle-tree`` (1.0.x) builds, so wallets and tools that read its
JSON dump work unchanged, and what ``MerkleProof.verify`` in OpenZeppelin Contracts accepts
(docs/PROTOCOL.md, "Reward distribution tree"):

- leaf = keccak256(keccak256(abi.encode(address, uint256))): the address left-padded to 32
  bytes, the amount as a 32-byte big-endian word, hashed twice;
- the leaves are sorted by hash (bytewise, ascending) and laid out as a complete binary
  tree in an array of 2n-1 nodes: node i has children 2i+1 and 2i+2; the sorted leaf k is
  node 2n-2-k (the last leaf first from the end), inner nodes are filled from the end;
- an inner node is keccak256 of its children sorted bytewise and concatenated;
- a proof is the sibling of the leaf's node, then of its parent, ... up to the root's child.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_hash.auto import keccak
from eth_utils.address import is_address, to_checksum_address

from protocol.errors import VerificationError

LEAF_ENCODING = ("address", "uint256")
FORMAT = "standard-v1"
MAX_UINT256 = 2**256 - 1
MAX_DUMP_BYTES = 64 * 1024 * 1024


def leaf_hash(address: str, amount: int) -> bytes:
    """keccak256(keccak256(abi.encode(address, amount))) of one ``(address, uint256)`` leaf."""
    encoded = bytes(12) + bytes.fromhex(address[2:]) + amount.to_bytes(32, "big")
    return bytes(keccak(keccak(encoded)))


def node_hash(a: bytes, b: bytes) -> bytes:
    """keccak256 of the two children sorted bytewise (OpenZeppelin's commutative hash)."""
    return bytes(keccak(a + b if a <= b else b + a))


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` leads to from ``leaf`` (MerkleProof.processProof)."""
    node = leaf
    for sibling in proof:
        node = node_hash(node, sibling)
    return node


def verify_claim(root: bytes, address: str, amount: int, proof: Sequence[bytes]) -> None:
    """Check that ``(address, amount)`` is a leaf under ``root``; raise VerificationError if not."""
    if process_proof(leaf_hash(checked_address(address), checked_amount(amount)), proof) != root:
        raise VerificationError(f"proof does not lead from ({address}, {amount}) to root "
                                f"0x{root.hex()}")


def checked_address(address: str) -> str:
    """The EIP-55 checksum form of a 0x address; ValueError if it is not one."""
    if not is_address(address):
        raise ValueError(f"not an Ethereum address (0x and 40 hex digits, or EIP-55): {address!r}")
    return str(to_checksum_address(address))


def checked_amount(amount: int) -> int:
    """``amount`` if it fits a uint256; ValueError otherwise."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= MAX_UINT256:
        raise ValueError(f"not a uint256 amount: {amount!r}")
    return amount


@dataclass(frozen=True)
class Leaf:
    """One value of the tree: an address (EIP-55), its amount and its node index."""

    address: str
    amount: int
    tree_index: int


class DistributionTree:
    """The tree of ``(address, cumulative amount)`` values, in the order they were given."""

    def __init__(self, tree: list[bytes], leaves: list[Leaf]) -> None:
        """Use :meth:`build` or :meth:`load`; this takes an already consistent tree."""
        self.tree = tree
        self.leaves = leaves
        self._by_address = {leaf.address: leaf for leaf in leaves}

    @classmethod
    def build(cls, values: Sequence[tuple[str, int]]) -> DistributionTree:
        """Build the tree of ``values`` (at least one; each address at most once).

        Raises ValueError for no values, a repeated address, a malformed address or amount.
        """
        if not values:
            raise ValueError("a distribution tree needs at least one value")
        checked = [(checked_address(a), checked_amount(n)) for a, n in values]
        if len({a for a, _ in checked}) != len(checked):
            raise ValueError("an address appears more than once in the distribution")
        hashed = sorted(((leaf_hash(a, n), i) for i, (a, n) in enumerate(checked)))
        size = 2 * len(hashed) - 1
        tree: list[bytes] = [b""] * size
        index_of = [0] * len(checked)
        for k, (digest, value_index) in enumerate(hashed):
            tree[size - 1 - k] = digest
            index_of[value_index] = size - 1 - k
        for i in range(size - 1 - len(hashed), -1, -1):
            tree[i] = node_hash(tree[2 * i + 1], tree[2 * i + 2])
        leaves = [Leaf(a, n, index_of[i]) for i, (a, n) in enumerate(checked)]
        return cls(tree, leaves)

    @property
    def root(self) -> bytes:
        """The 32-byte root."""
        return self.tree[0]

    def leaf(self, address: str) -> Leaf:
        """The leaf of ``address``; KeyError if the address has none."""
        return self._by_address[checked_address(address)]

    def proof(self, address: str) -> list[bytes]:
        """The proof of ``address``'s leaf (siblings from the leaf up); KeyError if none."""
        index = self.leaf(address).tree_index
        proof = []
        while index > 0:
            proof.append(self.tree[index + 1 if index % 2 else index - 1])
            index = (index - 1) // 2
        return proof

    def dump(self) -> dict[str, Any]:
        """The JSON object ``StandardMerkleTree.dump()`` gives for the same tree."""
        return {"format": FORMAT, "leafEncoding": list(LEAF_ENCODING),
                "tree": ["0x" + node.hex() for node in self.tree],
                "values": [{"value": [leaf.address, str(leaf.amount)],
                            "treeIndex": leaf.tree_index} for leaf in self.leaves]}

    @classmethod
    def load(cls, text: str | bytes) -> DistributionTree:
        """Read a dump (ours or the npm package's), rebuild it and check it is the same tree.

        Raises VerificationError if it is malformed or its nodes are not what its values give.
        """
        if len(text) > MAX_DUMP_BYTES:
            raise VerificationError(f"tree dump larger than {MAX_DUMP_BYTES} bytes")
        try:
            data = json.loads(text)
            if data["format"] != FORMAT or list(data["leafEncoding"]) != list(LEAF_ENCODING):
                raise VerificationError(f"not a {FORMAT} tree of {list(LEAF_ENCODING)}")
            values = [(str(v["value"][0]), int(v["value"][1])) for v in data["values"]]
            nodes = [bytes.fromhex(str(node).removeprefix("0x")) for node in data["tree"]]
            indices = [int(v["treeIndex"]) for v in data["values"]]
            rebuilt = cls.build(values)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise VerificationError(f"malformed tree dump: {exc}") from None
        if rebuilt.tree != nodes or [leaf.tree_index for leaf in rebuilt.leaves] != indices:
            raise VerificationError("tree dump's nodes are not the tree its values build")
        return rebuilt
