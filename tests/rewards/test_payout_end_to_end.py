"""Usage credit a device earned reaches its owner's wallet, end to end, on real parts.

A real gateway (MQTT ingest from the real broker, SQLite log, HTTP API) with a ``[payout]``
section, a real ganache node running the compiled contracts, a company that funded the
distributor. The device sends usage records; its owner binds a wallet with a binding signed
by its owner key; the gateway computes an epoch from the checkpointed balances and posts its
root; through ``edgeproof-owner wallet`` the owner sees its claimable amount (the gateway's
proof checked against the root on chain), claims with its wallet key and sees the tokens
arrive. ``edgeproof-verify payout`` recomputes the epoch from the log and the chain.
Forged and second bindings are refused with one line and counted.
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.uplink.settings import GatewayKey as AgentGatewayKey
from firmware_sim.broker import MosquittoBroker
from firmware_sim.chain import GanacheNode
from firmware_sim.solidity import Deployment, address_of
from gateway.gatewaykey import GatewayKey
from owner.cli import main as owner_main
from protocol.documents import sign_document
from protocol.keys import (
    OwnerKey,
    Secret,
    SigningKey,
    save_owner_key,
    signer_id,
    write_secret_file,
)
from protocol.payout_notice import verify_payout_notice
from protocol.record import credit_micro
from rewards import distributor as abi
from rewards.documents import BASE_UNITS_PER_MICRO, WalletBinding, owner_name
from rewards.ethkey import load_eth_key
from tests.gateway.conftest import RunningGateway
from tests.gateway.gwkit import RATE, DeviceClient, TestDevice, register
from tests.harness.waiting import eventually
from tests.rewards.conftest import KEYS
from verifier.cli import main as verify_main

WALLET = address_of(KEYS["owner_a"])


def owner_key(label: bytes) -> SigningKey:
    return SigningKey(Secret(hashlib.sha256(b"e2e-owner-" + label).digest()))


def binding(key: SigningKey, owner: SigningKey, address: str, chain_id: int) -> str:
    """A wallet binding for ``owner``'s id, signed by ``key`` (the owner's own, or a forger's)."""
    body = WalletBinding(signer_id(owner.public_key), bytes.fromhex(address[2:]), chain_id)
    return sign_document(body, key, 1_700_000_000_000).raw.hex()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    return eventually(check, what, timeout, every_s=0.1)


def notice_of(base: str, owner: OwnerKey, verifier: str) -> tuple[int, int | None, int | None]:
    """(entitled, claimed, claimable) micro-credits from the owner's payout notice, checked
    as a device checks it: signed by the pinned gateway key, for the pinned owner."""
    answer = httpx.get(f"{base}/v1/payouts/notice/{owner.owner_id.hex()}")
    assert answer.status_code == 200, answer.text
    served = answer.json()
    body = verify_payout_notice(bytes.fromhex(served["document"]),
                                AgentGatewayKey.from_text(verifier).public_key,
                                owner.public_key)
    assert (served["entitled_micro"], served["claimed_micro"], served["address"]) == (
        body.entitled_micro, body.claimed_micro, WALLET)
    return body.entitled_micro, body.claimed_micro, body.claimable_micro


def test_credit_mined_by_a_tv_is_claimed_into_its_owners_wallet(
        ungated_payout_gateway: RunningGateway, deployed: Deployment, broker: MosquittoBroker,
        chain: GanacheNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The wallet side (bind, status, claim, verify) in the explicit ungated mode; the same
    # under consent gating, with a company's request, funding and the owner's consent:
    # test_consent_gating.py::test_gated_epoch_pays_the_wallet_only_consented_funded_credit...
    payout_gateway = ungated_payout_gateway
    base = payout_gateway.base_url
    company = address_of(KEYS["company"])
    deployed.give(company, 10**24)
    deployed.fund(KEYS["company"], 10**24, bytes(32))
    owner = OwnerKey.generate()
    save_owner_key(tmp_path / "owner.key", owner)
    wallet_key = tmp_path / "wallet.key"  # a funded account: the claim pays its own gas
    write_secret_file(wallet_key, KEYS["owner_a"].value.hex().encode())
    tv = TestDevice.create("tv-payout", 51)
    register(base, tv, owner=owner_name(owner.owner_id))
    tv.mono_ms = 100_000
    devices = DeviceClient(broker.port, payout_gateway.verifier)
    try:
        devices.send(tv, [tv.usage(10_000, 40_000, 30_000).raw], 1)
        devices.wait_for(tv.device_id, 1)
    finally:
        devices.close()
    earned = credit_micro(30_000, RATE) * BASE_UNITS_PER_MICRO
    endpoints = ["--gateway", base, "--rpc", chain.url]

    assert owner_main(["wallet", "bind", "--wallet-key", str(wallet_key), "--key",
                       str(tmp_path / "owner.key"), *endpoints]) == 0
    assert WALLET in capsys.readouterr().out
    proof = wait_for("the owner's proof", lambda: (
        r.json() if (r := httpx.get(f"{base}/v1/payouts/proof/{WALLET}")).status_code == 200
        else None))
    assert int(proof["amount"]) == earned
    assert owner_main(["wallet", "status", "--wallet-key", str(wallet_key), *endpoints,
                       "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert (before["claimable"], before["claimed"], before["balance"]) == (str(earned), "0", "0")
    # What a device of this owner shows in Home Assistant: the gateway's signed notice.
    assert notice_of(base, owner, payout_gateway.verifier) == (
        earned // BASE_UNITS_PER_MICRO, 0, earned // BASE_UNITS_PER_MICRO)
    stranger = OwnerKey.generate().owner_id.hex()
    assert httpx.get(f"{base}/v1/payouts/notice/{stranger}").status_code == 404

    assert owner_main(["wallet", "claim", "--wallet-key", str(wallet_key), *endpoints,
                       "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert (after["claimable"], after["claimed"], after["balance"]) == ("0", str(earned),
                                                                       str(earned))
    assert deployed.balance(WALLET) == earned
    # The notice reads claimed() at most once per CLAIMED_TTL_S (5 s) an address.
    wait_for("the claim in the owner's notice", lambda: notice_of(
        base, owner, payout_gateway.verifier) == (
        earned // BASE_UNITS_PER_MICRO, earned // BASE_UNITS_PER_MICRO, 0))
    assert owner_main(["wallet", "claim", "--wallet-key", str(wallet_key), *endpoints]) == 1
    assert "nothing to claim" in capsys.readouterr().err
    assert deployed.balance(WALLET) == earned

    status = verify_main(["payout", "--gateway", base, "--rpc", chain.url, "--json",
                          "--gateway-key", payout_gateway.verifier])
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    root = deployed.rpc.eth_call(deployed.distributor, abi.view("merkleRoot"))
    assert report["root"] == "0x" + root.hex()
    impostor = GatewayKey.generate("gateway.test/edgeproof").verifier_text()
    assert verify_main(["payout", "--gateway", base, "--rpc", chain.url,
                        "--gateway-key", impostor]) == 1
    assert "FAILED" in capsys.readouterr().err


def test_wallet_key_is_made_private_and_never_printed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "wallet.key"
    assert owner_main(["wallet", "keygen", "--wallet-key", str(key_file)]) == 0
    printed = capsys.readouterr().out
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secret = key_file.read_text().strip()
    assert secret not in printed
    assert printed.strip() == load_eth_key(key_file)[1]
    assert owner_main(["wallet", "keygen", "--wallet-key", str(key_file)]) == 2  # never overwritten
    assert key_file.read_text().strip() == secret


def test_forged_or_second_wallet_binding_is_refused_and_counted(
        payout_gateway: RunningGateway, chain: GanacheNode) -> None:
    base = payout_gateway.base_url
    owner, forger = owner_key(b"bob"), owner_key(b"mallory")
    deviceless = httpx.post(f"{base}/v1/wallets", json={
        "document": binding(owner, owner, WALLET, chain.chain_id)})
    assert deviceless.status_code == 404  # no registered device has this owner yet
    register(base, TestDevice.create("tv-bob", 52), owner=owner_name(signer_id(owner.public_key)))
    forged = httpx.post(f"{base}/v1/wallets",
                        json={"document": binding(forger, owner, WALLET, chain.chain_id)})
    assert forged.status_code == 400
    assert "another owner" in forged.json()["detail"]
    wrong_chain = httpx.post(f"{base}/v1/wallets",
                             json={"document": binding(owner, owner, WALLET, 1)})
    assert wrong_chain.status_code == 400
    first = httpx.post(f"{base}/v1/wallets",
                       json={"document": binding(owner, owner, WALLET, chain.chain_id)})
    assert first.status_code == 201
    second = httpx.post(f"{base}/v1/wallets", json={
        "document": binding(owner, owner, address_of(KEYS["stranger"]), chain.chain_id)})
    assert second.status_code == 409
    metrics = httpx.get(f"{base}/metrics").text
    for reason in ("unknown_owner", "bad_signature", "wrong_chain", "wallet_taken"):
        assert f'edgeproof_gateway_payout_wallets_refused_total{{reason="{reason}"}} 1.0' \
            in metrics
    listed = httpx.get(f"{base}/v1/wallets").json()
    assert [w["address"] for w in listed] == [WALLET]
