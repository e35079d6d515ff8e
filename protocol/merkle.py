"""Merkle tree hashing, inclusion and consistency proofs per RFC 9162 §2.1 (SHA-256).

Two ways to build proofs:

- List-based (:func:`root`, :func:`inclusion_proof`, :func:`consistency_proof`): the caller
  holds every leaf hash in memory. Good for tests and small trees.
- Node-based (:class:`CompactRange`, :class:`NodeReader`, :func:`root_from_nodes`,
  :func:`inclusion_proof_from_nodes`, :func:`consistency_proof_from_nodes`): the caller
  stores only the hashes of *perfect* subtrees, addressed by ``(level, index)`` where the
  node covers leaves ``[index * 2**level, (index + 1) * 2**level)``. Appending a leaf with
  :meth:`CompactRange.append` costs O(1) amortised and returns the nodes it completed, for
  the caller to persist; a proof then reads O(log n) of them.

Both ways produce byte-identical proofs.

Verification (:func:`verify_inclusion`, :func:`verify_consistency`) follows the algorithms
of RFC 9162 §2.1.3.2 and §2.1.4.2 and fails closed: it returns ``None`` or raises
:class:`~protocol.errors.VerificationError`, never a bool. Builders raise ``ValueError``
for caller programming errors (an index outside the tree, a hash of the wrong length).

Everything here is pure: no I/O, no global state; hashing uses :mod:`hashlib` only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from protocol.errors import VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "DictNodeStore",
    "NodeReader",
    "consistency_proof",
    "consistency_proof_from_nodes",
    "inclusion_proof",
    "inclusion_proof_from_nodes",
    "leaf_hash",
    "node_hash",
    "root",
    "root_from_nodes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

# (begin, end) -> MTH(D[begin:end]); lets the list- and node-based builders share one walk.
_SubtreeHash = Callable[[int, int], bytes]


# --------------------------------------------------------------------------- hashing


def leaf_hash(data: bytes) -> bytes:
    """Return the hash of one leaf, SHA-256(0x00 || data) (RFC 9162 §2.1.1)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the hash of an interior node, SHA-256(0x01 || left || right) (RFC 9162 §2.1.1)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(size: int) -> int:
    """Return k, the largest power of two strictly below ``size`` (``size`` >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def _fold_right(hashes: Sequence[bytes]) -> bytes:
    """Combine subtree hashes right to left: h0 . (h1 . (h2 ...)); EMPTY_ROOT if none."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for left in reversed(hashes[:-1]):
        acc = node_hash(left, acc)
    return acc


# --------------------------------------------------------------------------- list-based


def _require_leaf_hashes(leaf_hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(leaf_hashes):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise ValueError(f"leaf hash {i} is not {HASH_SIZE} bytes")


def _list_subtree(leaf_hashes: Sequence[bytes]) -> _SubtreeHash:
    """Return a function computing MTH(D[begin:end]) from in-memory leaf hashes."""

    def mth(begin: int, end: int) -> bytes:
        size = end - begin
        if size == 0:
            return EMPTY_ROOT
        if size == 1:
            return leaf_hashes[begin]
        mid = begin + _split(size)
        return node_hash(mth(begin, mid), mth(mid, end))

    return mth


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return MTH(D[n]) over already-hashed leaves (RFC 9162 §2.1.1).

    The empty tree's root is :data:`EMPTY_ROOT`. Raises ``ValueError`` if a leaf hash is
    not 32 bytes.
    """
    _require_leaf_hashes(leaf_hashes)
    return _list_subtree(leaf_hashes)(0, len(leaf_hashes))


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Return PATH(index, D[n]), the inclusion proof of one leaf (RFC 9162 §2.1.3.1).

    Nodes are ordered from the leaf's sibling up to the root's child. Raises
    ``ValueError`` if ``index`` is not in ``[0, n)`` or a leaf hash is not 32 bytes.
    """
    _require_leaf_hashes(leaf_hashes)
    _require_index(index, len(leaf_hashes))
    return _inclusion_path(index, len(leaf_hashes), _list_subtree(leaf_hashes))


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """Return PROOF(old_size, D[n]) between the first ``old_size`` leaves and all n leaves.

    RFC 9162 §2.1.4.1. The proof is empty when ``old_size == n``. Raises ``ValueError``
    if ``old_size`` is not in ``[1, n]`` or a leaf hash is not 32 bytes.
    """
    _require_leaf_hashes(leaf_hashes)
    _require_sizes(old_size, len(leaf_hashes))
    return _consistency_path(old_size, len(leaf_hashes), _list_subtree(leaf_hashes))


# --------------------------------------------------------------------------- shared walks


def _require_index(index: int, tree_size: int) -> None:
    if not 0 <= index < tree_size:
        raise ValueError(f"leaf index {index} is outside a tree of size {tree_size}")


def _require_sizes(old_size: int, new_size: int) -> None:
    if not 0 < old_size <= new_size:
        raise ValueError(f"old size {old_size} must be in [1, {new_size}]")


def _inclusion_path(index: int, tree_size: int, subtree: _SubtreeHash) -> list[bytes]:
    """Walk PATH(index, D[tree_size]) of RFC 9162 §2.1.3.1 from the root down.

    At each step the range [begin, end) is split at k; the half not holding ``index``
    contributes its MTH. Siblings are found top-down, so the list is reversed at the end.
    """
    siblings: list[bytes] = []
    begin, end = 0, tree_size
    while end - begin > 1:
        mid = begin + _split(end - begin)
        if index < mid:
            siblings.append(subtree(mid, end))
            end = mid
        else:
            siblings.append(subtree(begin, mid))
            begin = mid
    siblings.reverse()
    return siblings


def _consistency_path(old_size: int, new_size: int, subtree: _SubtreeHash) -> list[bytes]:
    """Walk SUBPROOF(old_size, D[new_size], true) of RFC 9162 §2.1.4.1 from the root down.

    ``m`` is the old size relative to ``begin``. The walk stops at the subtree whose size
    equals ``m``; its MTH is included only if it is not the old tree itself (b == false).
    """
    siblings: list[bytes] = []
    begin, end, m = 0, new_size, old_size
    is_old_root = True
    while m != end - begin:
        mid = begin + _split(end - begin)
        if m <= mid - begin:
            siblings.append(subtree(mid, end))
            end = mid
        else:
            siblings.append(subtree(begin, mid))
            m -= mid - begin
            begin = mid
            is_old_root = False
    siblings.reverse()
    return siblings if is_old_root else [subtree(begin, end), *siblings]


# --------------------------------------------------------------------------- verification


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise VerificationError(f"{what} is not a {HASH_SIZE}-byte hash")
    return bytes(value)


def _check_size(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise VerificationError(f"{what} is not a non-negative integer: {value!r}")
    return value


def _check_proof(proof: object) -> list[bytes]:
    if not isinstance(proof, Sequence) or isinstance(proof, bytes | bytearray | str):
        raise VerificationError("proof is not a sequence of hashes")
    return [_check_hash(p, f"proof node {i}") for i, p in enumerate(proof)]


def _shift_while_right_border(fn: int, sn: int) -> tuple[int, int]:
    """Right-shift fn and sn together until LSB(fn) is set or fn is 0 (RFC 9162 §2.1.3.2)."""
    while fn & 1 == 0 and fn != 0:
        fn >>= 1
        sn >>= 1
    return fn, sn


def _root_from_inclusion_path(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes]
) -> bytes:
    """Run steps 2-5 of RFC 9162 §2.1.3.2; return the computed root or raise."""
    fn, sn = index, tree_size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise VerificationError(f"inclusion proof is too long for a tree of size {tree_size}")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _shift_while_right_border(fn, sn)
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError(f"inclusion proof is too short for a tree of size {tree_size}")
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    Implements RFC 9162 §2.1.3.2. Returns ``None`` on success. Raises
    :class:`VerificationError` if any hash is not 32 bytes, ``index`` or ``tree_size`` is
    not a non-negative integer, ``index >= tree_size``, the proof has the wrong number of
    nodes, or the computed root differs from ``root``.
    """
    leaf = _check_hash(leaf_hash, "leaf hash")
    expected = _check_hash(root, "root")
    index = _check_size(index, "leaf index")
    tree_size = _check_size(tree_size, "tree size")
    nodes = _check_proof(proof)
    if index >= tree_size:
        raise VerificationError(f"leaf index {index} is outside a tree of size {tree_size}")
    if _root_from_inclusion_path(leaf, index, tree_size, nodes) != expected:
        raise VerificationError(
            f"inclusion proof for leaf {index} does not lead to the root of size {tree_size}"
        )


def _roots_from_consistency_path(
    old_size: int, new_size: int, old_root: bytes, proof: Sequence[bytes]
) -> tuple[bytes, bytes]:
    """Run steps 2-6 of RFC 9162 §2.1.4.2 (0 < old_size < new_size); return (fr, sr)."""
    if old_size & (old_size - 1) == 0:  # old tree is perfect: its root is the first node
        proof = [old_root, *proof]
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise VerificationError(f"consistency proof is too long for {old_size}->{new_size}")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            fn, sn = _shift_while_right_border(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError(f"consistency proof is too short for {old_size}->{new_size}")
    return fr, sr


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``new_size`` with ``new_root`` extends the old tree.

    Implements RFC 9162 §2.1.4.2. Returns ``None`` on success; raises
    :class:`VerificationError` on any failure:

    - a hash that is not 32 bytes, or a size that is not a non-negative integer;
    - ``old_size > new_size``;
    - ``old_size == new_size``: the proof must be empty and the roots equal;
    - ``old_size == 0``: the RFC calls this case trivial and defines no proof. This module
      accepts only an empty proof, and requires ``old_root`` to be :data:`EMPTY_ROOT`
      (if ``new_size`` is also 0, ``new_root`` too) so a wrong old root never passes;
    - otherwise a proof of the wrong length, or one that does not reproduce both roots.
    """
    old_size = _check_size(old_size, "old size")
    new_size = _check_size(new_size, "new size")
    old = _check_hash(old_root, "old root")
    new = _check_hash(new_root, "new root")
    nodes = _check_proof(proof)
    if old_size > new_size:
        raise VerificationError(f"old size {old_size} is larger than new size {new_size}")
    if old_size in (0, new_size):
        _verify_trivial_consistency(old_size, new_size, old, new, nodes)
        return
    if not nodes:
        raise VerificationError(f"consistency proof for sizes {old_size}->{new_size} is empty")
    fr, sr = _roots_from_consistency_path(old_size, new_size, old, nodes)
    if fr != old:
        raise VerificationError(f"consistency proof does not reproduce the old root ({old_size})")
    if sr != new:
        raise VerificationError(f"consistency proof does not reproduce the new root ({new_size})")


def _verify_trivial_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Handle old_size == 0 and old_size == new_size (see :func:`verify_consistency`)."""
    if proof:
        raise VerificationError(
            f"consistency proof for sizes {old_size}->{new_size} must be empty, "
            f"got {len(proof)} nodes"
        )
    if old_size == 0 and old_root != EMPTY_ROOT:
        raise VerificationError("old root of an empty tree is not the empty-tree hash")
    if old_size == new_size and old_root != new_root:
        raise VerificationError(f"roots differ for the same tree size {old_size}")


# --------------------------------------------------------------------------- stored nodes


class NodeReader(Protocol):
    """Read access to stored perfect-subtree hashes."""

    def get_node(self, level: int, index: int) -> bytes:
        """Return the hash of the perfect subtree over leaves [index*2^level, (index+1)*2^level).

        Level 0 nodes are the leaf hashes. Only complete subtrees are ever requested.
        """
        ...


def _perfect_subtrees(begin: int, end: int) -> list[tuple[int, int]]:
    """Decompose [begin, end) into perfect subtrees (level, index), largest first.

    ``begin`` must be a multiple of the largest subtree's width, which holds for every
    range the RFC recursion produces (a range starting at a split point k is aligned to k
    and is no wider than k).
    """
    size = end - begin
    nodes: list[tuple[int, int]] = []
    pos = begin
    for level in range(size.bit_length() - 1, -1, -1):
        width = 1 << level
        if size & width:
            if pos % width:
                raise ValueError(f"range [{begin}, {end}) is not aligned to its subtrees")
            nodes.append((level, pos >> level))
            pos += width
    return nodes


def _node_subtree(reader: NodeReader) -> _SubtreeHash:
    """Return a function computing MTH(D[begin:end]) from stored perfect subtrees."""

    def mth(begin: int, end: int) -> bytes:
        peaks = [reader.get_node(level, index) for level, index in _perfect_subtrees(begin, end)]
        return _fold_right(peaks)

    return mth


def root_from_nodes(reader: NodeReader, tree_size: int) -> bytes:
    """Return MTH(D[tree_size]) reading one stored node per set bit of ``tree_size``.

    RFC 9162 §2.1.1. :data:`EMPTY_ROOT` for size 0. Raises ``ValueError`` for a negative
    size; errors from ``reader`` propagate unchanged.
    """
    if tree_size < 0:
        raise ValueError(f"tree size {tree_size} is negative")
    return _node_subtree(reader)(0, tree_size)


def inclusion_proof_from_nodes(reader: NodeReader, index: int, tree_size: int) -> list[bytes]:
    """Return the same proof as :func:`inclusion_proof` (RFC 9162 §2.1.3.1) from stored nodes.

    Reads at most about 2*log2(tree_size) nodes. Raises ``ValueError`` if ``index`` is not
    in ``[0, tree_size)``; errors from ``reader`` propagate unchanged.
    """
    _require_index(index, tree_size)
    return _inclusion_path(index, tree_size, _node_subtree(reader))


def consistency_proof_from_nodes(reader: NodeReader, old_size: int, new_size: int) -> list[bytes]:
    """Return the same proof as :func:`consistency_proof` (RFC 9162 §2.1.4.1) from stored nodes.

    Reads at most about 2*log2(new_size) nodes. Raises ``ValueError`` if ``old_size`` is not
    in ``[1, new_size]``; errors from ``reader`` propagate unchanged.
    """
    _require_sizes(old_size, new_size)
    return _consistency_path(old_size, new_size, _node_subtree(reader))


# --------------------------------------------------------------------------- compact range


class CompactRange:
    """The frontier of an append-only tree: one hash per perfect subtree ("peak").

    Peaks are kept largest (leftmost) first; their levels are the set bits of :attr:`size`.
    """

    def __init__(self) -> None:
        """Start an empty range (size 0)."""
        self._peaks: list[tuple[int, bytes]] = []
        self._size = 0

    @property
    def size(self) -> int:
        """Return the number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf hash; return the perfect subtrees it completed.

        Each item is ``(level, index_at_level, hash)``, starting with the leaf itself at
        level 0, in increasing level. O(1) amortised. Raises ``ValueError`` if
        ``leaf_hash`` is not 32 bytes.
        """
        if not isinstance(leaf_hash, bytes) or len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash is not {HASH_SIZE} bytes")
        position = self._size
        level, acc = 0, leaf_hash
        completed = [(0, position, acc)]
        while self._peaks and self._peaks[-1][0] == level:
            _, left = self._peaks.pop()
            acc = node_hash(left, acc)
            level += 1
            completed.append((level, position >> level, acc))
        self._peaks.append((level, acc))
        self._size += 1
        return completed

    def root(self) -> bytes:
        """Return the root of the tree appended so far; equals :func:`root` of the leaves."""
        return _fold_right([h for _, h in self._peaks])

    def to_state(self) -> list[tuple[int, bytes]]:
        """Return the peaks as ``(level, hash)``, largest first, for storage."""
        return list(self._peaks)

    @classmethod
    def from_state(cls, peaks: Iterable[tuple[int, bytes]]) -> CompactRange:
        """Rebuild a range from :meth:`to_state` output; the size follows from the levels.

        Raises ``ValueError`` if levels are not strictly decreasing non-negative integers
        or a hash is not 32 bytes.
        """
        restored = cls()
        previous: int | None = None
        for level, h in peaks:
            if level < 0 or (previous is not None and level >= previous):
                raise ValueError("peak levels must be non-negative and strictly decreasing")
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise ValueError(f"peak hash at level {level} is not {HASH_SIZE} bytes")
            restored._peaks.append((level, h))
            restored._size += 1 << level
            previous = level
        return restored


class DictNodeStore:
    """In-memory :class:`NodeReader`: a dict keyed by ``(level, index)``. For tests."""

    def __init__(self) -> None:
        """Start empty."""
        self.nodes: dict[tuple[int, int], bytes] = {}

    def get_node(self, level: int, index: int) -> bytes:
        """Return the stored hash; raises ``KeyError`` naming the node if it is absent."""
        try:
            return self.nodes[(level, index)]
        except KeyError:
            raise KeyError(f"no stored node at level {level}, index {index}") from None

    def put_all(self, completed: Iterable[tuple[int, int, bytes]]) -> None:
        """Store the ``(level, index, hash)`` items returned by :meth:`CompactRange.append`."""
        for level, index, h in completed:
            self.nodes[(level, index)] = h

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> DictNodeStore:
        """Return a store holding every perfect subtree of the given leaves."""
        store = cls()
        frontier = CompactRange()
        for h in leaf_hashes:
            store.put_all(frontier.append(h))
        return store
