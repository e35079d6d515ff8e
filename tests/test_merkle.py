"""Tests for protocol.merkle (RFC 9162 §2.1 Merkle trees).

The reference implementation at the top of this file transcribes the RFC's recursive
definitions (MTH, PATH, PROOF/SUBPROOF) over slices, with no shared code from the module,
so the module's iterative and node-based forms are checked against the spec text itself.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import VerificationError
from protocol.merkle import (
    EMPTY_ROOT,
    CompactRange,
    DictNodeStore,
    consistency_proof,
    consistency_proof_from_nodes,
    inclusion_proof,
    inclusion_proof_from_nodes,
    leaf_hash,
    node_hash,
    root,
    root_from_nodes,
    verify_consistency,
    verify_inclusion,
)

# --------------------------------------------------------------------------- reference


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """Largest power of two strictly less than n (n > 1), by counting up as the RFC says."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH over raw leaf *data*."""
    if len(d) == 0:
        return _sha256(b"")
    if len(d) == 1:
        return _sha256(b"\x00" + d[0])
    k = _k(len(d))
    return _sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n]) over raw leaf data."""
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF(m, D[n], b) over raw leaf data."""
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


# --------------------------------------------------------------------------- fixtures

# Leaf data of the RFC 6962 test tree used by certificate-transparency-go and Trillian.
CT_DATA = [
    bytes.fromhex(x)
    for x in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_LEAVES = [leaf_hash(x) for x in CT_DATA]
CT_ROOTS = {
    0: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
# (index, size, proof) and (old, new, proof) from the same reference data set.
CT_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
CT_CONSISTENCY = [
    (
        2,
        8,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

MAX_INCLUSION_SIZE = 200
MAX_CONSISTENCY_SIZE = 64

DATA = [b"edgeproof leaf %d" % i for i in range(MAX_INCLUSION_SIZE)]
LEAVES = [leaf_hash(x) for x in DATA]
STORE = DictNodeStore.from_leaf_hashes(LEAVES)
ROOTS = [root(LEAVES[:n]) for n in range(MAX_INCLUSION_SIZE + 1)]


class CountingReader:
    """NodeReader wrapper that counts get_node calls."""

    def __init__(self, inner: DictNodeStore) -> None:
        self.inner = inner
        self.calls = 0

    def get_node(self, level: int, index: int) -> bytes:
        self.calls += 1
        return self.inner.get_node(level, index)


def _flip(h: bytes, pos: int) -> bytes:
    return h[:pos] + bytes([h[pos] ^ 0x01]) + h[pos + 1 :]


# --------------------------------------------------------------------------- known answers


def test_hash_primitives_use_rfc_domain_separation_prefixes() -> None:
    assert leaf_hash(b"abc") == _sha256(b"\x00abc")
    assert node_hash(b"L" * 32, b"R" * 32) == _sha256(b"\x01" + b"L" * 32 + b"R" * 32)
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]


@pytest.mark.parametrize("size", range(9))
def test_roots_match_ct_reference_tree_heads(size: int) -> None:
    assert ref_mth(CT_DATA[:size]).hex() == CT_ROOTS[size], "reference impl disagrees"
    assert root(CT_LEAVES[:size]).hex() == CT_ROOTS[size]
    store = DictNodeStore.from_leaf_hashes(CT_LEAVES)
    assert root_from_nodes(store, size).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("index", "size", "expected"), CT_INCLUSION)
def test_inclusion_proofs_match_ct_reference(index: int, size: int, expected: list[str]) -> None:
    assert [p.hex() for p in ref_path(index, CT_DATA[:size])] == expected
    proof = inclusion_proof(CT_LEAVES[:size], index)
    assert [p.hex() for p in proof] == expected
    verify_inclusion(CT_LEAVES[index], index, size, proof, bytes.fromhex(CT_ROOTS[size]))


@pytest.mark.parametrize(("old", "new", "expected"), CT_CONSISTENCY)
def test_consistency_proofs_match_ct_reference(old: int, new: int, expected: list[str]) -> None:
    assert [p.hex() for p in ref_proof(old, CT_DATA[:new])] == expected
    proof = consistency_proof(CT_LEAVES[:new], old)
    assert [p.hex() for p in proof] == expected
    verify_consistency(old, new, bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new]), proof)


def test_list_builders_match_rfc_recursion_transcribed_here() -> None:
    data = DATA[:40]
    for n in range(1, len(data) + 1):
        assert root(LEAVES[:n]) == ref_mth(data[:n])
        for m in range(n):
            assert inclusion_proof(LEAVES[:n], m) == ref_path(m, data[:n])
        for m in range(1, n + 1):
            assert consistency_proof(LEAVES[:n], m) == ref_proof(m, data[:n])


# --------------------------------------------------------------------------- round trips


def test_every_inclusion_proof_verifies_and_node_proofs_equal_list_proofs() -> None:
    for n in range(1, MAX_INCLUSION_SIZE + 1):
        prefix = LEAVES[:n]
        assert root_from_nodes(STORE, n) == ROOTS[n]
        for i in range(n):
            proof = inclusion_proof(prefix, i)
            assert inclusion_proof_from_nodes(STORE, i, n) == proof, (i, n)
            verify_inclusion(LEAVES[i], i, n, proof, ROOTS[n])


def test_every_consistency_proof_verifies_and_node_proofs_equal_list_proofs() -> None:
    for n in range(1, MAX_CONSISTENCY_SIZE + 1):
        prefix = LEAVES[:n]
        for m in range(1, n + 1):
            proof = consistency_proof(prefix, m)
            assert consistency_proof_from_nodes(STORE, m, n) == proof, (m, n)
            verify_consistency(m, n, ROOTS[m], ROOTS[n], proof)


def test_same_size_consistency_is_empty_and_needs_equal_roots() -> None:
    assert consistency_proof(LEAVES[:5], 5) == []
    verify_consistency(5, 5, ROOTS[5], ROOTS[5], [])
    with pytest.raises(VerificationError, match="roots differ"):
        verify_consistency(5, 5, ROOTS[5], ROOTS[6], [])
    with pytest.raises(VerificationError, match="must be empty"):
        verify_consistency(5, 5, ROOTS[5], ROOTS[5], [ROOTS[5]])


def test_consistency_from_empty_tree_accepts_only_empty_proof_and_empty_root() -> None:
    verify_consistency(0, 8, EMPTY_ROOT, ROOTS[8], [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(VerificationError, match="must be empty"):
        verify_consistency(0, 8, EMPTY_ROOT, ROOTS[8], [ROOTS[8]])
    with pytest.raises(VerificationError, match="empty-tree hash"):
        verify_consistency(0, 8, ROOTS[1], ROOTS[8], [])
    with pytest.raises(VerificationError):
        verify_consistency(0, 0, EMPTY_ROOT, ROOTS[1], [])


# --------------------------------------------------------------------------- tampering

TAMPER_CASES = [(i, n) for n in (1, 2, 3, 5, 7, 8, 13, 16, 31, 64, 100) for i in {0, n // 2, n - 1}]


def _verifies(check: Callable[..., object], *args: object) -> bool:
    """Whether ``check(*args)`` accepts; False when it raises VerificationError."""
    try:
        check(*args)
    except VerificationError:
        return False
    return True


def _inclusion_mutants(proof: list[bytes]) -> list[tuple[str, list[bytes]]]:
    mutants: list[tuple[str, list[bytes]]] = [
        ("extra node", [*proof, ROOTS[3]]),
        ("extra node in front", [ROOTS[3], *proof]),
    ]
    if proof:
        mutants.append(("missing last node", proof[:-1]))
        mutants.append(("missing first node", proof[1:]))
    for j in range(len(proof) - 1):
        if proof[j] != proof[j + 1]:
            swapped = list(proof)
            swapped[j], swapped[j + 1] = swapped[j + 1], swapped[j]
            mutants.append((f"swapped {j}<->{j + 1}", swapped))
    for j, node in enumerate(proof):
        for pos in (0, 13, 31):
            changed = list(proof)
            changed[j] = _flip(node, pos)
            mutants.append((f"node {j} byte {pos} flipped", changed))
    return mutants


@pytest.mark.parametrize(("index", "size"), TAMPER_CASES)
def test_tampered_inclusion_proof_is_rejected(index: int, size: int) -> None:
    proof = inclusion_proof(LEAVES[:size], index)
    accepted = [what for what, mutant in _inclusion_mutants(proof)
                if _verifies(verify_inclusion, LEAVES[index], index, size, mutant, ROOTS[size])]
    assert accepted == []


def test_every_byte_of_a_proof_node_matters() -> None:
    proof = inclusion_proof(LEAVES[:77], 41)
    for j, node in enumerate(proof):
        for pos in range(32):
            changed = list(proof)
            changed[j] = _flip(node, pos)
            with pytest.raises(VerificationError, match="does not lead to the root"):
                verify_inclusion(LEAVES[41], 41, 77, changed, ROOTS[77])


@pytest.mark.parametrize(("index", "size"), TAMPER_CASES)
def test_inclusion_with_wrong_index_size_leaf_or_root_is_rejected(index: int, size: int) -> None:
    proof = inclusion_proof(LEAVES[:size], index)
    leaf, good_root = LEAVES[index], ROOTS[size]
    for other in {index - 1, index + 1, size, size + 1, -1} - {index}:
        with pytest.raises(VerificationError):
            verify_inclusion(leaf, other, size, proof, good_root)
    # The size is authenticated by the root it is paired with (a signed tree head), so a
    # wrong size is tested together with that size's genuine root.
    for other_size in {size - 1, size + 1, 2 * size} - {size}:
        with pytest.raises(VerificationError):
            verify_inclusion(leaf, index, other_size, proof, ROOTS[other_size])
    with pytest.raises(VerificationError):
        verify_inclusion(leaf, index, 0, proof, EMPTY_ROOT)
    with pytest.raises(VerificationError):
        verify_inclusion(_flip(leaf, 5), index, size, proof, good_root)
    with pytest.raises(VerificationError, match="does not lead to the root"):
        verify_inclusion(leaf, index, size, proof, _flip(good_root, 0))
    with pytest.raises(VerificationError):
        verify_inclusion(leaf, index, size, proof, ROOTS[size + 1])


def test_inclusion_index_at_or_beyond_size_is_rejected_with_clear_message() -> None:
    with pytest.raises(VerificationError, match="outside a tree of size 8"):
        verify_inclusion(LEAVES[0], 8, 8, inclusion_proof(LEAVES[:8], 0), ROOTS[8])
    with pytest.raises(VerificationError, match="outside a tree of size 0"):
        verify_inclusion(LEAVES[0], 0, 0, [], EMPTY_ROOT)


def test_inclusion_proof_of_wrong_length_names_the_problem() -> None:
    proof = inclusion_proof(LEAVES[:8], 3)
    with pytest.raises(VerificationError, match="too long"):
        verify_inclusion(LEAVES[3], 3, 8, [*proof, proof[0]], ROOTS[8])
    with pytest.raises(VerificationError, match="too short"):
        verify_inclusion(LEAVES[3], 3, 8, proof[:-1], ROOTS[8])


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33])
def test_non_32_byte_hashes_are_rejected_everywhere(bad: bytes) -> None:
    proof = inclusion_proof(LEAVES[:8], 3)
    with pytest.raises(VerificationError, match="leaf hash"):
        verify_inclusion(bad, 3, 8, proof, ROOTS[8])
    with pytest.raises(VerificationError, match="root"):
        verify_inclusion(LEAVES[3], 3, 8, proof, bad)
    with pytest.raises(VerificationError, match="proof node 1"):
        verify_inclusion(LEAVES[3], 3, 8, [proof[0], bad, proof[2]], ROOTS[8])
    cproof = consistency_proof(LEAVES[:8], 3)
    with pytest.raises(VerificationError, match="old root"):
        verify_consistency(3, 8, bad, ROOTS[8], cproof)
    with pytest.raises(VerificationError, match="new root"):
        verify_consistency(3, 8, ROOTS[3], bad, cproof)
    with pytest.raises(VerificationError, match="proof node 0"):
        verify_consistency(3, 8, ROOTS[3], ROOTS[8], [bad, *cproof[1:]])


def test_non_integer_or_negative_sizes_are_rejected_as_verification_errors() -> None:
    proof = inclusion_proof(LEAVES[:8], 3)
    for bad in (-1, True, 3.0, "3", None):
        with pytest.raises(VerificationError):
            verify_inclusion(LEAVES[3], bad, 8, proof, ROOTS[8])  # type: ignore[arg-type]
        with pytest.raises(VerificationError):
            verify_consistency(bad, 8, ROOTS[3], ROOTS[8], [])  # type: ignore[arg-type]
    with pytest.raises(VerificationError, match="sequence"):
        verify_inclusion(LEAVES[3], 3, 8, b"\x00" * 96, ROOTS[8])  # type: ignore[arg-type]


CONSISTENCY_TAMPER_CASES = [(1, 2), (1, 8), (2, 8), (3, 7), (4, 9), (6, 8), (7, 64), (33, 40)]


@pytest.mark.parametrize(("old", "new"), CONSISTENCY_TAMPER_CASES)
def test_tampered_consistency_proof_is_rejected(old: int, new: int) -> None:
    proof = consistency_proof(LEAVES[:new], old)
    old_root, new_root = ROOTS[old], ROOTS[new]
    accepted = [what for what, mutant in _inclusion_mutants(proof)
                if _verifies(verify_consistency, old, new, old_root, new_root, mutant)]
    assert accepted == []
    # For a perfect old tree the old root is the proof's first node, so a wrong one shows
    # up as a wrong new root; either way the message names a root.
    with pytest.raises(VerificationError, match=r"reproduce the (old|new) root"):
        verify_consistency(old, new, _flip(old_root, 7), new_root, proof)
    with pytest.raises(VerificationError, match="reproduce the new root"):
        verify_consistency(old, new, old_root, _flip(new_root, 7), proof)
    with pytest.raises(VerificationError):
        verify_consistency(old, new, ROOTS[old + 1], new_root, proof)
    with pytest.raises(VerificationError):
        verify_consistency(old, new + 1, old_root, ROOTS[new + 1], proof)
    with pytest.raises(VerificationError, match="is empty"):
        verify_consistency(old, new, old_root, new_root, [])


def test_consistency_proof_of_wrong_length_names_the_problem() -> None:
    proof = consistency_proof(LEAVES[:8], 3)
    with pytest.raises(VerificationError, match="too long"):
        verify_consistency(3, 8, ROOTS[3], ROOTS[8], [*proof, proof[0]])
    with pytest.raises(VerificationError, match="too short"):
        verify_consistency(3, 8, ROOTS[3], ROOTS[8], proof[:-1])


def test_consistency_with_old_size_larger_than_new_is_rejected() -> None:
    proof = consistency_proof(LEAVES[:8], 6)
    with pytest.raises(VerificationError, match="larger than new size"):
        verify_consistency(8, 6, ROOTS[8], ROOTS[6], proof)


# --------------------------------------------------------------------------- builder errors


def test_builders_raise_value_error_for_programming_errors() -> None:
    with pytest.raises(ValueError, match="outside"):
        inclusion_proof(LEAVES[:8], 8)
    with pytest.raises(ValueError, match="outside"):
        inclusion_proof(LEAVES[:8], -1)
    with pytest.raises(ValueError, match="outside"):
        inclusion_proof([], 0)
    with pytest.raises(ValueError, match="old size"):
        consistency_proof(LEAVES[:8], 0)
    with pytest.raises(ValueError, match="old size"):
        consistency_proof(LEAVES[:8], 9)
    with pytest.raises(ValueError, match="32 bytes"):
        root([b"short"])
    with pytest.raises(ValueError, match="outside"):
        inclusion_proof_from_nodes(STORE, 5, 5)
    with pytest.raises(ValueError, match="old size"):
        consistency_proof_from_nodes(STORE, 6, 5)
    with pytest.raises(ValueError, match="negative"):
        root_from_nodes(STORE, -1)


# --------------------------------------------------------------------------- hypothesis

hashes32 = st.binary(min_size=32, max_size=32)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, MAX_INCLUSION_SIZE), data=st.data())
def test_random_size_and_index_inclusion_round_trips(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof_from_nodes(STORE, index, size)
    verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])


@settings(max_examples=200, deadline=None)
@given(new=st.integers(1, MAX_INCLUSION_SIZE), data=st.data())
def test_random_sizes_consistency_round_trips(new: int, data: st.DataObject) -> None:
    old = data.draw(st.integers(1, new))
    proof = consistency_proof_from_nodes(STORE, old, new)
    verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


sizes = st.integers(-3, 1 << 70)
junk_hash = st.one_of(hashes32, st.binary(max_size=40))


@settings(max_examples=300, deadline=None)
@given(
    leaf=junk_hash,
    index=sizes,
    size=sizes,
    proof=st.lists(junk_hash, max_size=70),
    root_=junk_hash,
)
def test_random_inclusion_proofs_never_verify_and_only_raise_verification_error(
    leaf: bytes, index: int, size: int, proof: list[bytes], root_: bytes
) -> None:
    with pytest.raises(VerificationError):
        verify_inclusion(leaf, index, size, proof, root_)


@settings(max_examples=300, deadline=None)
@given(
    old=sizes,
    new=sizes,
    old_root=junk_hash,
    new_root=junk_hash,
    proof=st.lists(junk_hash, max_size=70),
)
def test_random_consistency_proofs_never_verify_and_only_raise_verification_error(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> None:
    from_empty = old == 0 and old_root == EMPTY_ROOT and (new > 0 or new_root == old_root)
    same_tree = old == new and old > 0 and old_root == new_root and len(old_root) == 32
    if not proof and (from_empty or same_tree):
        return  # the trivially consistent cases, which do verify by definition
    with pytest.raises(VerificationError):
        verify_consistency(old, new, old_root, new_root, proof)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(2, MAX_INCLUSION_SIZE), data=st.data())
def test_random_proof_for_a_real_leaf_and_root_never_verifies(
    size: int, data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, size - 1))
    length = len(inclusion_proof_from_nodes(STORE, index, size))
    proof = data.draw(st.lists(hashes32, min_size=length, max_size=length))
    with pytest.raises(VerificationError):
        verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])


# --------------------------------------------------------------------------- compact range


def test_compact_range_root_after_each_append_equals_root_of_prefix() -> None:
    cr = CompactRange()
    assert cr.size == 0
    assert cr.root() == EMPTY_ROOT
    for n, h in enumerate(LEAVES, start=1):
        cr.append(h)
        assert cr.size == n
        assert cr.root() == ROOTS[n]


def test_compact_range_append_reports_completed_perfect_subtrees() -> None:
    cr = CompactRange()
    for i in range(7):
        cr.append(LEAVES[i])
    completed = cr.append(LEAVES[7])
    assert [(level, index) for level, index, _ in completed] == [(0, 7), (1, 3), (2, 1), (3, 0)]
    assert [h for _, _, h in completed] == [
        LEAVES[7],
        root(LEAVES[6:8]),
        root(LEAVES[4:8]),
        ROOTS[8],
    ]
    assert cr.append(LEAVES[8]) == [(0, 8, LEAVES[8])]


def test_store_holds_exactly_the_perfect_subtrees() -> None:
    store = DictNodeStore.from_leaf_hashes(LEAVES[:13])
    expected = {(lv, i) for lv in range(4) for i in range(13 >> lv)}
    assert set(store.nodes) == expected
    for level, index in expected:
        lo, hi = index << level, (index + 1) << level
        assert store.get_node(level, index) == root(LEAVES[lo:hi])
    with pytest.raises(KeyError, match="level 2, index 3"):
        store.get_node(2, 3)


@pytest.mark.parametrize("restart_at", [0, 1, 2, 5, 8, 63, 64, 100])
def test_compact_range_restored_from_state_continues_correctly(restart_at: int) -> None:
    original = CompactRange()
    for h in LEAVES[:restart_at]:
        original.append(h)
    state = original.to_state()
    assert [level for level, _ in state] == [
        b for b in range(restart_at.bit_length() - 1, -1, -1) if restart_at >> b & 1
    ]
    restored = CompactRange.from_state(state)
    assert restored.size == restart_at
    assert restored.root() == ROOTS[restart_at]
    for n in range(restart_at, restart_at + 40):
        assert restored.append(LEAVES[n]) == original.append(LEAVES[n])
        assert restored.root() == ROOTS[n + 1]


@pytest.mark.parametrize(
    "state",
    [
        [(1, LEAVES[0]), (1, LEAVES[1])],
        [(0, LEAVES[0]), (2, LEAVES[1])],
        [(-1, LEAVES[0])],
        [(3, b"short")],
    ],
)
def test_compact_range_rejects_malformed_state(state: list[tuple[int, bytes]]) -> None:
    with pytest.raises(ValueError, match=r"^peak (levels|hash)"):
        CompactRange.from_state(state)


def test_compact_range_rejects_a_leaf_that_is_not_a_hash() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        CompactRange().append(b"raw data, not hashed")


# --------------------------------------------------------------------------- O(log n) reads

BIG = 1 << 16


@pytest.fixture(scope="module")
def big_store() -> DictNodeStore:
    return DictNodeStore.from_leaf_hashes(_sha256(i.to_bytes(4, "big")) for i in range(BIG))


def _count_reads(store: DictNodeStore, build: Callable[..., object], *args: int) -> int:
    reader = CountingReader(store)
    build(reader, *args)
    return reader.calls


@pytest.mark.parametrize("size", [BIG, BIG - 1, 40_000, 43_690, 12_345, 3])
def test_node_proofs_read_logarithmically_many_nodes(big_store: DictNodeStore, size: int) -> None:
    bound = 2 * math.ceil(math.log2(size)) + 2
    for index in {0, 1, size // 3, size // 2, size - 2, size - 1}:
        reads = _count_reads(big_store, inclusion_proof_from_nodes, index, size)
        assert reads <= bound, (index, size, reads)
    for old in {1, 2, size // 3, size // 2 + 1, size - 1, size}:
        reads = _count_reads(big_store, consistency_proof_from_nodes, old, size)
        assert reads <= bound, (old, size, reads)
    assert _count_reads(big_store, root_from_nodes, size) <= bound


def test_node_proofs_in_a_big_tree_verify_against_the_node_root(big_store: DictNodeStore) -> None:
    size, old = 43_690, 12_345
    new_root = root_from_nodes(big_store, size)
    old_root = root_from_nodes(big_store, old)
    leaf = big_store.get_node(0, 777)
    verify_inclusion(leaf, 777, size, inclusion_proof_from_nodes(big_store, 777, size), new_root)
    verify_consistency(
        old, size, old_root, new_root, consistency_proof_from_nodes(big_store, old, size)
    )
