"""The payout epoch states the distributor's deployment block (docs/PROTOCOL.md §19.2 key 14)
so a verifier reads its events from there, not from genesis; a block the chain does not bear
out (one after the deployment would hide Funded events) is refused.

Real ganache node, real gateway: the gateway signs what its ``[payout] distributor_block``
says; the verifier's eth_getLogs ranges are noted (tests/rewards/test_funding_ledger.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from firmware_sim.broker import MosquittoBroker, free_port
from firmware_sim.chain import GanacheNode
from firmware_sim.solidity import Deployment, address_of
from gateway import payout as gateway_payout
from gateway.cli import main as gateway_main
from osutil.jsonrpc import JsonRpc
from owner.cli import main as owner_main
from protocol.errors import TransportError, VerificationError
from protocol.keys import save_owner_key, write_secret_file
from rewards import distributor as abi
from rewards.documents import PayoutEpoch
from rewards.funding import check_deployed_in, funded_totals
from tests.gateway.contractkit import submitted
from tests.gateway.gwkit import write_gateway_files
from tests.rewards.conftest import KEYS, payout_section, running_payout_gateway
from tests.rewards.test_consent_gating import EARNED, World
from tests.rewards.test_funding_ledger import WatchedRpc
from tests.rewards.test_payout_end_to_end import wait_for
from verifier.client import DocumentClient
from verifier.payout import verify_payout

TERMS = b"\x0d" * 32


def test_a_block_after_the_deployment_that_would_hide_funded_events_is_refused(
        chain: GanacheNode, deployed: Deployment) -> None:
    deployed.give(address_of(KEYS["company"]), 10**24)
    funded = deployed.fund(KEYS["company"], 700, TERMS)
    after = int(funded["blockNumber"], 16) + 1
    rpc = deployed.rpc
    with pytest.raises(TransportError, match=f"no block {after}"):  # not mined yet: retry
        check_deployed_in(rpc, deployed.distributor, after)
    rpc.call("evm_mine")
    assert funded_totals(rpc, deployed.distributor, after, rpc.block_number()) == {}  # hidden
    assert funded_totals(rpc, deployed.distributor, deployed.distributor_block,
                         rpc.block_number()) == {TERMS: 700}
    check_deployed_in(rpc, deployed.distributor, deployed.distributor_block)
    check_deployed_in(rpc, deployed.distributor.lower(), deployed.distributor_block)
    for wrong in (after, deployed.distributor_block + 1,
                  deployed.distributor_block - 1):  # the token's creation: another contract
        with pytest.raises(VerificationError, match=f"no transaction of block {wrong} "
                                                    "created the distributor"):
            check_deployed_in(rpc, deployed.distributor, wrong)


def test_an_epoch_without_the_deployment_block_encodes_as_before_and_round_trips() -> None:
    fields = dict(epoch=1, checkpoint_size=1, balances_hash=b"\0" * 32, root=b"\0" * 32,
                  total_micro=0, owners=0, locked_micro=0, chain_id=1,
                  distributor=b"\0" * 20, rate=1, wallets=0, funding_block=9)
    old = PayoutEpoch(**fields)  # type: ignore[arg-type]
    old_body = old.to_cbor_value()
    assert isinstance(old_body, dict)
    assert sorted(old_body) == list(range(1, 13))  # byte for byte what it was before key 14
    assert PayoutEpoch.from_cbor_value(old_body) == old
    stated = PayoutEpoch(**fields, distributor_block=7)  # type: ignore[arg-type]
    body = stated.to_cbor_value()
    assert isinstance(body, dict)
    assert body[14] == 7
    assert PayoutEpoch.from_cbor_value(body) == stated


@contextmanager
def gateway_with(tmp_path: Path, broker: MosquittoBroker, chain: GanacheNode,
                 deployed: Deployment, block: int | None) -> Iterator[World]:
    """A consent-gated gateway whose config names ``block`` (None: no distributor_block),
    with a consented, funded, used device and a bound wallet: an epoch will pay it."""
    for gateway in running_payout_gateway(tmp_path, broker, chain, deployed, block=block):
        world = World(gateway, broker, chain, deployed)
        try:
            request = world.parties.request()
            submitted(world.base, request)
            world.fund(request, 100 * EARNED)
            submitted(world.base, world.parties.consent(request))
            world.use()
            save_owner_key(tmp_path / "owner.key", world.parties.owner)
            write_secret_file(tmp_path / "wallet.key", KEYS["owner_a"].value.hex().encode())
            assert owner_main(["wallet", "bind", "--key", str(tmp_path / "owner.key"),
                               "--wallet-key", str(tmp_path / "wallet.key"),
                               "--gateway", world.base, "--rpc", chain.url]) == 0
            yield world
        finally:
            world.devices.close()


def verified(world: World) -> dict[str, object]:
    """The first epoch that verifies and pays the consented credit, verified once more on a
    node that notes the ranges read."""
    def attempt() -> dict[str, object] | None:
        rpc = JsonRpc(world.chain.url, timeout_s=30)
        try:
            report = verify_payout(DocumentClient(world.base), world.verifier, rpc)
        except TransportError:  # not posted, or not under a checkpoint yet
            return None
        finally:
            rpc.close()
        return report if report["total_micro"] == EARNED else None

    report: dict[str, object] = wait_for("a verified epoch paying the credit", attempt)
    return report


def funded_ranges(world: World, epoch: object) -> tuple[dict[str, object], WatchedRpc]:
    rpc = WatchedRpc(world.chain.url)
    try:
        return verify_payout(DocumentClient(world.base), world.verifier, rpc,
                             int(str(epoch))), rpc
    finally:
        rpc.close()


@pytest.mark.parametrize("stated", [True, False], ids=["stated", "old_document"])
def test_the_honest_epoch_is_read_from_the_deployment_block_and_an_old_one_from_genesis(
        tmp_path: Path, broker: MosquittoBroker, chain: GanacheNode, deployed: Deployment,
        stated: bool) -> None:
    block = deployed.distributor_block if stated else None
    with gateway_with(tmp_path, broker, chain, deployed, block) as world:
        report, rpc = funded_ranges(world, verified(world)["epoch"])
        assert report["distributor_block"] == block
        assert report["consent_gated"] is True
        assert report["total_micro"] == EARNED
        funded = [r for r, t in zip(rpc.ranges, rpc.topics, strict=True) if t == abi.FUNDED]
        assert funded
        assert funded[0][0] == (block if stated else 0)
        assert all(start >= (block or 0) for start, _ in rpc.ranges)  # RootPosted too


def test_an_epoch_claiming_a_block_after_the_deployment_is_refused(
        tmp_path: Path, broker: MosquittoBroker, chain: GanacheNode, deployed: Deployment,
        monkeypatch: pytest.MonkeyPatch) -> None:
    later = deployed.distributor_block + 1  # a lying gateway's word
    # An honest gateway refuses to start with that block (the test below); a lying one
    # skips its own check: here, the test's gateway with the check taken out.
    monkeypatch.setattr(gateway_payout, "check_deployed_in", lambda *_: None)
    with gateway_with(tmp_path, broker, chain, deployed, later) as world:

        def refused() -> str | None:
            rpc = JsonRpc(world.chain.url, timeout_s=30)
            try:
                verify_payout(DocumentClient(world.base), world.verifier, rpc)
            except TransportError:  # not posted, or not under a checkpoint yet
                return None
            except VerificationError as exc:
                return str(exc)
            finally:
                rpc.close()
            raise AssertionError("an epoch stating a later block verified")

        reason = wait_for("the epoch refused", refused)
        assert reason == (f"no transaction of block {later} created the distributor "
                          f"0x{deployed.distributor[2:].lower()}: it is not its "
                          "deployment block")


def test_a_gateway_configured_with_a_wrong_deployment_block_refuses_to_start_its_payouts(
        tmp_path: Path, chain: GanacheNode, deployed: Deployment,
        capsys: pytest.CaptureFixture[str]) -> None:
    deployed.rpc.call("evm_mine")  # a block after the deployment exists
    for wrong in (deployed.distributor_block + 1,  # its Funded events would be skipped
                  deployed.distributor_block - 1):  # the token's creation: another contract
        workdir = tmp_path / f"block-{wrong}"
        workdir.mkdir()
        payout = payout_section(workdir, chain, deployed, block=wrong)
        files = write_gateway_files(workdir / "gw", free_port(), extra=payout)
        assert gateway_main(["run", "--config", str(files.config), "--log-level",
                             "ERROR"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"edgeproof-gateway: error: payout.distributor_block = {wrong} is not "
                       f"the deployment block of the distributor {deployed.distributor}: no "
                       "transaction of that block created it"]


def test_a_gateway_whose_payout_chain_id_is_not_the_nodes_refuses_to_start_its_payouts(
        tmp_path: Path, chain: GanacheNode, deployed: Deployment,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Epochs would state a chain their funding was not read from, and the poster's
    # EIP-155 transactions would not be valid on the node's chain.
    other = chain.chain_id + 1
    payout = payout_section(tmp_path, chain, deployed).replace(
        f"chain_id = {chain.chain_id}\n", f"chain_id = {other}\n")
    files = write_gateway_files(tmp_path / "gw", free_port(), extra=payout)
    assert gateway_main(["run", "--config", str(files.config), "--log-level", "ERROR"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"edgeproof-gateway: error: payout.chain_id is {other} but the node at "
                   f"{chain.url} reports chain id {chain.chain_id}"]
