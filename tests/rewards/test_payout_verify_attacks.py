"""A dishonest gateway cannot steer a payout recomputation (docs/PROTOCOL.md §19.4).

Each test runs a real gateway on a real ganache node, then reads it through a client that
alters what the gateway serves, as a gateway with a doctored API would: a consent the log
does not hold (or holds at another leaf), a hidden revocation, a hidden or relabelled usage
record, other bytes at a leaf. The recomputation must raise and say what it caught.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.broker import MosquittoBroker
from firmware_sim.chain import GanacheNode
from firmware_sim.solidity import Deployment
from osutil.jsonrpc import JsonRpc
from owner.cli import main as owner_main
from protocol.documents import Document
from protocol.errors import TransportError, VerificationError
from protocol.keys import save_owner_key, write_secret_file
from tests.gateway.conftest import RunningGateway
from tests.gateway.contractkit import submitted
from tests.rewards.conftest import KEYS
from tests.rewards.test_consent_gating import EARNED, World
from tests.rewards.test_payout_end_to_end import wait_for
from verifier.client import DocumentClient, LoggedDocument, LoggedRecord
from verifier.payout import verify_payout


class DoctoredGateway(DocumentClient):
    """The real gateway's API with its listings altered: leaves hidden, moved, invented,
    relabelled, or other bytes served for a leaf."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.hidden: set[int] = set()
        self.moved: dict[int, int] = {}  # real leaf -> leaf the listing claims
        self.invented: dict[str, LoggedDocument] = {}  # type -> a document never logged
        self.relabelled: set[int] = set()  # usage records listed as another stream
        self.swapped: dict[int, bytes] = {}  # leaf -> other bytes served for it

    def all_documents(self, doc_type: str | None = None) -> list[LoggedDocument]:
        out = [dataclasses.replace(d, index=self.moved.get(d.index, d.index))
               for d in super().all_documents(doc_type) if d.index not in self.hidden]
        if doc_type in self.invented:
            out.append(self.invented[doc_type])
        return sorted(out, key=lambda d: d.index)

    def all_device_records(self, device_id: bytes) -> list[LoggedRecord]:
        return [dataclasses.replace(r, stream="climate") if r.index in self.relabelled else r
                for r in super().all_device_records(device_id) if r.index not in self.hidden]

    def leaf_range(self, start: int, limit: int = 1000) -> list[bytes]:
        return [self.swapped.get(start + i, raw)
                for i, raw in enumerate(super().leaf_range(start, limit))]


@dataclasses.dataclass
class Story:
    world: World
    leaves: dict[str, int]  # where the request, the consent and the revocation are logged
    unlogged: Document  # a consent the owner signed that was never logged


@pytest.fixture
def story(payout_gateway: RunningGateway, broker: MosquittoBroker, chain: GanacheNode,
          deployed: Deployment) -> Iterator[Story]:
    """Funded request; a record before consent, two under it, a revocation, one after."""
    world = World(payout_gateway, broker, chain, deployed)
    try:
        request = world.parties.request()
        leaves = {"request": submitted(world.base, request)}
        world.fund(request, 100 * EARNED)
        world.use()
        consent = world.parties.consent(request)
        leaves["consent"] = submitted(world.base, consent)
        world.use()
        world.use()
        leaves["revocation"] = submitted(world.base, world.parties.revocation(consent))
        world.use()
        honest = world.recompute()
        assert honest.owners == {world.owner_id: 2 * EARNED}
        yield Story(world, leaves, world.parties.consent(request))
    finally:
        world.devices.close()


def usage_leaves(world: World) -> list[int]:
    return [r.index for r in DocumentClient(world.base).all_device_records(
        world.parties.device.device_id) if r.stream == "usage"]


def test_a_consent_the_log_does_not_hold_is_caught_by_its_inclusion_proof(
        story: Story) -> None:
    world = story.world
    lying = DoctoredGateway(world.base)
    first_record = usage_leaves(world)[0]  # the invented consent would pay the locked record
    lying.invented["consent"] = LoggedDocument(first_record - 1, story.unlogged.raw, 0)
    with pytest.raises(VerificationError, match="does not hold there"):
        world.recompute(lying)
    with pytest.raises(VerificationError, match="is not in the checkpoint"):
        world.recompute(lying, scan=False)


def test_a_consent_moved_before_a_record_it_would_pay_is_caught(
        story: Story) -> None:
    world, leaves = story.world, story.leaves
    lying = DoctoredGateway(world.base)
    lying.moved[leaves["consent"]] = usage_leaves(world)[0] - 1
    with pytest.raises(VerificationError, match="is not in the checkpoint"):
        world.recompute(lying, scan=False)
    with pytest.raises(VerificationError):
        world.recompute(lying)


def test_a_hidden_revocation_is_caught_by_the_scan(
        story: Story) -> None:
    world, leaves = story.world, story.leaves
    lying = DoctoredGateway(world.base)
    lying.hidden.add(leaves["revocation"])
    with pytest.raises(VerificationError,
                       match=f"hides the revocation logged at leaf {leaves['revocation']}"):
        world.recompute(lying)
    # Inclusion proofs alone cannot see a leaf left out: that is what the scan is for.
    assert world.recompute(lying, scan=False).owners == {world.owner_id: 3 * EARNED}


def test_a_hidden_or_relabelled_usage_record_is_caught(
        story: Story) -> None:
    world = story.world
    paid = usage_leaves(world)[1]
    hiding = DoctoredGateway(world.base)
    hiding.hidden.add(paid)
    with pytest.raises(VerificationError, match=f"hides the usage record .* at leaf {paid}"):
        world.recompute(hiding)
    relabelling = DoctoredGateway(world.base)
    relabelling.relabelled.add(paid)  # the bytes tell it is a usage record: still counted
    assert world.recompute(relabelling).owners == {world.owner_id: 2 * EARNED}
    assert world.recompute(relabelling, scan=False).owners == {world.owner_id: 2 * EARNED}


def test_other_bytes_served_for_a_leaf_fail_the_scan(
        story: Story) -> None:
    world, leaves = story.world, story.leaves
    lying = DoctoredGateway(world.base)
    lying.swapped[leaves["revocation"]] = story.unlogged.raw
    with pytest.raises(VerificationError, match="do not make its root"):
        world.recompute(lying)


def test_verify_payout_refuses_an_epoch_whose_gateway_hides_a_revocation(
        story: Story, tmp_path: Path) -> None:
    world, leaves = story.world, story.leaves
    save_owner_key(tmp_path / "owner.key", world.parties.owner)
    write_secret_file(tmp_path / "wallet.key", KEYS["owner_a"].value.hex().encode())
    assert owner_main(["wallet", "bind", "--key", str(tmp_path / "owner.key"), "--wallet-key",
                       str(tmp_path / "wallet.key"), "--gateway", world.base,
                       "--rpc", world.chain.url]) == 0
    rpc = JsonRpc(world.chain.url, timeout_s=30)
    try:
        report = wait_for("a verified epoch paying the consented credit", lambda: (
            r if (r := _verified(DocumentClient(world.base), world, rpc))
            and r["total_micro"] == 2 * EARNED else None))
        assert report["log_scanned"] is True
        lying = DoctoredGateway(world.base)
        lying.hidden.add(leaves["revocation"])
        with pytest.raises(VerificationError, match="hides the revocation"):
            verify_payout(lying, world.verifier, rpc, int(str(report["epoch"])))
    finally:
        rpc.close()


def _verified(client: DocumentClient, world: World, rpc: JsonRpc) -> dict[str, object] | None:
    try:
        return verify_payout(client, world.verifier, rpc)
    except TransportError:  # not posted, or not under a checkpoint yet: poll again
        return None
