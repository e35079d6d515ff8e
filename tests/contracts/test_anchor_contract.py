"""The anchor contract: what every :class:`gateway.anchor.Anchor` backend must do.

One suite, run against every backend in ``BACKENDS``:

- ``local``: :class:`gateway.anchor.LocalAnchor`, the signed-checkpoint chain itself;
- ``ethereum``: :class:`gateway.eth_anchor.EthereumAnchor` against a real ganache node
  (firmware_sim.chain), its worker driven through ``step()`` with an injected monotonic
  clock so intervals pass without sleeping. The node starts only when this backend runs.
- ``ethereum-postgresql``: the same with its queue in the shared PostgreSQL store (a shared
  log's sequencer; tests/duty_tables.py), reopened through a new session each time.

A rig hands a checkpoint to the backend, drives it until the checkpoint is anchored and
returns the backend's reference; it reads back, from where the backend anchored, the hash
that reference commits to; and it closes and reopens the backend on the same files. A new
backend is tested by adding its rig to ``BACKENDS``. What only one backend does (nonces,
gas, re-sends, a node that goes away) stays in its own tests (tests/gateway/test_eth_anchor.py).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from firmware_sim.chain import GanacheNode
from gateway.anchor import Anchor, LocalAnchor
from gateway.config import EthereumAnchorConfig
from gateway.eth_anchor import ANCHOR_PREFIX, EthereumAnchor, EthTiming
from gateway.eth_queue import CONFIRMED
from protocol.checkpoint import checkpoint_hash
from protocol.keys import write_secret_file
from tests.checkpoint_notes import Notes, make_notes
from tests.duty_tables import DutyTables, duty_tables_for
from tests.gateway.chainkit import running_chain

CHAIN_ID = 1337
ETH_KEYS = 32  # funded accounts: one fresh sender per test, so nonces never interfere


class AnchorRig(Protocol):
    """One backend under test, and what the suite needs to observe it."""

    anchor: Anchor
    serves_lookup: bool  # False: GET /v1/anchors(/list) has nothing from it (LocalAnchor)

    def settle(self, note: str) -> str:
        """Hand ``note`` to ``anchor()``, drive until anchored; return the reference."""
        ...

    def committed_hash(self, reference: str) -> bytes:
        """The checkpoint hash found where ``reference`` points."""
        ...

    def reopen(self) -> Anchor:
        """Close the backend and open it again on the same files."""
        ...

    def recorded(self, note: str) -> bool:
        """Whether the backend kept anything for ``note`` (queued, sent or anchored)."""
        ...


def _checked(anchor: Anchor, note: str) -> str | None:
    """anchor(note), with what the interface promises of an immediate result."""
    result = anchor.anchor(note)
    if result is None:
        return None
    assert result.backend == anchor.name
    assert result.reference
    assert result.anchored_ms >= 0
    return result.reference


# --- local --------------------------------------------------------------------------------


class LocalRig:
    serves_lookup = False

    def __init__(self) -> None:
        self.anchor: Anchor = LocalAnchor(lambda: 1_700_000_000_000)

    def settle(self, note: str) -> str:
        reference = _checked(self.anchor, note)
        assert reference is not None, "the local chain anchors at once"
        return reference

    def committed_hash(self, reference: str) -> bytes:
        return base64.b64decode(reference, validate=True)

    def reopen(self) -> Anchor:
        self.anchor.close()
        self.anchor = LocalAnchor(lambda: 1_700_000_000_000)
        return self.anchor

    def recorded(self, note: str) -> bool:
        return False  # stateless: the gateway's store keeps the local results


# --- ethereum -----------------------------------------------------------------------------


def _eth_key(n: int) -> str:
    return "0x" + hashlib.sha256(f"edgeproof-contract-eth-key-{n}".encode()).hexdigest()


@dataclass
class _Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


class EthereumRig:
    serves_lookup = True

    def __init__(self, node: GanacheNode, key: str, tables: DutyTables) -> None:
        self.node, self.clock = node, _Clock()
        key_file = tables.workdir / "eth.key"
        write_secret_file(key_file, key.encode("ascii") + b"\n")
        self._config = EthereumAnchorConfig(rpc_url=node.url, key_file=key_file,
                                            chain_id=CHAIN_ID, interval_s=5.0)
        self._tables = tables  # its queue: a SQLite file, or the shared PostgreSQL store
        self.eth = self._open()
        self.anchor: Anchor = self.eth

    def _open(self) -> EthereumAnchor:
        return EthereumAnchor(self._config, self._tables.anchor_queue(), wall_ms=lambda: 1,
                              monotonic=self.clock, timing=EthTiming(rpc_timeout_s=10.0))

    def settle(self, note: str) -> str:
        immediate = _checked(self.anchor, note)
        for _ in range(60):
            entry = self.eth.entry(note)
            if entry is not None and entry.state == CONFIRMED and entry.tx_hash:
                assert immediate in (None, entry.tx_hash)
                return entry.tx_hash
            self.clock.now += self.eth.step()  # the worker's next step, without sleeping
        pytest.fail(f"checkpoint not anchored: {self.eth.entry(note)}")

    def committed_hash(self, reference: str) -> bytes:
        tx = self.node.rpc("eth_getTransactionByHash", reference)
        data = bytes.fromhex(tx["input"][2:])
        assert data.startswith(ANCHOR_PREFIX)
        return data[len(ANCHOR_PREFIX):]

    def reopen(self) -> Anchor:
        self.eth.close()
        self.eth = self._open()
        self.anchor = self.eth
        return self.anchor

    def recorded(self, note: str) -> bool:
        return self.eth.entry(note) is not None


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GanacheNode]:
    yield from running_chain(tmp_path_factory.mktemp("chain"),
                             [_eth_key(n) for n in range(ETH_KEYS)])


@pytest.fixture(scope="module")
def eth_keys() -> Iterator[str]:
    return (_eth_key(n) for n in itertools.count())


def _local(request: pytest.FixtureRequest, tmp_path: Path) -> AnchorRig:
    return LocalRig()


def _ethereum_on(kind: str) -> Callable[[pytest.FixtureRequest, Path], AnchorRig]:
    """The ethereum backend with its queue in tables of ``kind`` (tests/duty_tables.py)."""
    def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AnchorRig:
        keys: Iterator[str] = request.getfixturevalue("eth_keys")
        key = next(keys)
        assert key in {_eth_key(n) for n in range(ETH_KEYS)}, "fund more keys (ETH_KEYS)"
        tables = duty_tables_for(request, kind, tmp_path)
        request.addfinalizer(tables.close)
        return EthereumRig(request.getfixturevalue("chain"), key, tables)
    return rig


# One line per backend: a function (request, tmp_path) -> AnchorRig.
BACKENDS: list[Callable[[pytest.FixtureRequest, Path], AnchorRig]] = [
    _local, _ethereum_on("file"), _ethereum_on("postgresql")]


@pytest.fixture(params=BACKENDS, ids=["local", "ethereum", "ethereum-postgresql"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnchorRig]:
    made: AnchorRig = request.param(request, tmp_path)
    try:
        yield made
    finally:
        made.anchor.close()


@pytest.fixture
def notes() -> Notes:
    return make_notes()


# --- the contract -------------------------------------------------------------------------


def test_anchor_commits_to_the_hash_of_the_checkpoint_it_was_given(
        rig: AnchorRig, notes: Notes) -> None:
    for _ in range(2):
        note = notes.next()
        assert rig.committed_hash(rig.settle(note)) == checkpoint_hash(note)


def test_different_checkpoints_are_not_anchored_under_one_reference(
        rig: AnchorRig, notes: Notes) -> None:
    first, second = notes.next(), notes.next()
    assert rig.settle(first) != rig.settle(second)


def test_checkpoint_handed_over_twice_is_anchored_once(rig: AnchorRig, notes: Notes) -> None:
    note = notes.next()
    assert rig.settle(note) == rig.settle(note)


def test_anchor_survives_closing_and_reopening_the_backend(
        rig: AnchorRig, notes: Notes) -> None:
    note = notes.next()
    reference = rig.settle(note)
    rig.reopen()
    assert rig.settle(note) == reference  # the same anchor, not a second one


def test_checkpoint_queued_before_a_restart_is_still_anchored_after_it(
        rig: AnchorRig, notes: Notes) -> None:
    note = notes.next()
    rig.anchor.anchor(note)  # whatever the backend does with it now...
    rig.reopen()  # ...survives a restart
    assert rig.committed_hash(rig.settle(note)) == checkpoint_hash(note)


def test_lookup_before_any_anchor_finds_nothing(rig: AnchorRig) -> None:
    assert rig.anchor.lookup(None) is None
    assert rig.anchor.lookup(1) is None


def test_lookup_of_a_size_no_anchored_checkpoint_covers_is_not_found(
        rig: AnchorRig, notes: Notes) -> None:
    rig.settle(notes.next())
    assert rig.anchor.lookup(notes.size + 1) is None


def test_lookup_finds_the_earliest_anchored_checkpoint_covering_the_size(
        rig: AnchorRig, notes: Notes) -> None:
    first, second = notes.next(), notes.next()  # sizes 3 and 6
    rig.settle(first)
    rig.settle(second)
    covering, latest = rig.anchor.lookup(4), rig.anchor.lookup(None)
    if not rig.serves_lookup:  # served by GET /v1/checkpoints instead
        assert covering is None
        assert latest is None
        return
    assert covering is not None
    assert covering["backend"] == rig.anchor.name
    assert covering["size"] == 6
    assert covering["note"] == second
    assert latest is not None
    assert latest["note"] == second
    exact = rig.anchor.lookup(3)
    assert exact is not None
    assert exact["note"] == first


def test_empty_checkpoint_is_never_anchored(rig: AnchorRig, notes: Notes) -> None:
    empty = notes.next(grow=0)  # size 0: the checkpoint a gateway signs at first start
    assert rig.anchor.anchor(empty) is None  # it commits to no record
    assert not rig.recorded(empty)  # not queued: nothing is ever spent on it
    assert rig.anchor.lookup(None) is None
    assert rig.anchor.listing(0, 10) in (None, [])
    first = notes.next(grow=1)  # the first real checkpoint is anchored as usual
    assert rig.committed_hash(rig.settle(first)) == checkpoint_hash(first)


def test_listing_pages_through_anchored_checkpoints_smallest_first(
        rig: AnchorRig, notes: Notes) -> None:
    sent = [notes.next() for _ in range(3)]  # sizes 3, 6, 9
    for note in sent:
        rig.settle(note)
    listed = rig.anchor.listing(0, 10)
    if not rig.serves_lookup:  # served by GET /v1/checkpoints instead
        assert listed is None
        return
    assert listed is not None
    assert [a["note"] for a in listed] == sent
    assert [a["size"] for a in listed] == [3, 6, 9]
    assert all(a["backend"] == rig.anchor.name for a in listed)
    page = rig.anchor.listing(3, 1)
    assert page is not None
    assert [a["size"] for a in page] == [6]
    assert rig.anchor.listing(9, 10) == []
