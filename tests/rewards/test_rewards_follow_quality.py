"""Rewards follow quality (docs/PROTOCOL.md §19.4 rule 5): a usage record a trusted
validator's faulty verdict covers earns its owner nothing, a healthy one is paid, an owner's
own (untrusted) hub can neither clear nor harm a sensor, and `edgeproof-verify payout`
recomputes the withheld credit from the log. The hand-worked vector pins the rule; the
end-to-end test runs a consent-gated gateway, a real ganache node and the distributor."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from firmware_sim.broker import MosquittoBroker
from firmware_sim.chain import REPO_ROOT, GanacheNode
from firmware_sim.solidity import Deployment, address_of
from owner.cli import main as owner_main
from protocol.documents import sign_document
from protocol.errors import MalformedRecord
from protocol.keys import (
    RecipientKey,
    Secret,
    SigningKey,
    save_owner_key,
    signer_id,
    write_secret_file,
)
from protocol.quality import QualityAttestation, SensorAttestation
from rewards.documents import BASE_UNITS_PER_MICRO, PayoutEpoch
from rewards.gating import Event, gate
from rewards.quality import QualityJudge, VerdictLeaf
from tests.gateway.contractkit import ADMIN, submitted
from tests.rewards.conftest import KEYS, running_payout_gateway
from tests.rewards.test_consent_gating import EARNED, World, vector_event
from tests.rewards.test_payout_end_to_end import wait_for
from verifier.cli import main as verify_main

TRUSTED = SigningKey(Secret(b"\x21" * 32))  # the operator's validator
HUB = SigningKey(Secret(b"\x22" * 32))  # the owner's own hub: registered, not trusted


def quality_vector() -> tuple[list[Event], list[VerdictLeaf], dict[str, Any]]:
    vector = json.loads((REPO_ROOT / "tests" / "vectors" / "quality_rewards.json")
                        .read_text())
    events, verdicts = [], []
    for entry in vector["events"]:
        if "quality" not in entry:
            events.append(vector_event(entry))
            continue
        q = entry["quality"]
        verdicts += [VerdictLeaf(entry["leaf"], bytes.fromhex(q["validator"]),
                                 bytes.fromhex(device), state == "faulty", q["window_start_ms"],
                                 q["window_start_ms"] + q["window_ms"])
                     for device, state in q["verdicts"].items()]
    return events, verdicts, vector


def test_the_hand_worked_vector_withholds_the_faulty_sensors_credit_only() -> None:
    events, verdicts, vector = quality_vector()
    judge = QualityJudge(verdicts, [bytes.fromhex(v) for v in vector["trusted"]])
    gated = gate(events, {bytes.fromhex(k): v for k, v in vector["funded_micro"].items()},
                 judge.withheld)
    expected = vector["expected"]
    hexed = {name: {k.hex(): v for k, v in getattr(gated, name).items()}
             for name in ("owners", "earned", "paid", "short_at")}
    assert hexed == {name: expected[name] for name in hexed}
    assert (gated.settled_micro, gated.withheld_micro, gated.locked_micro) == (
        expected["settled_micro"], expected["withheld_micro"], expected["locked_micro"])


def test_an_untrusted_hub_cannot_clear_its_own_sensor_nor_a_later_verdict_take_back_pay(
        ) -> None:
    events, verdicts, _ = quality_vector()
    funded = {b"\x0a" * 32: 10_000}
    nobody = gate(events, funded, QualityJudge(verdicts, []).withheld)
    assert nobody.withheld_micro == 0  # no trusted validator: quality changes nothing
    hub_only = gate(events, funded, QualityJudge(verdicts, [b"\xb0" * 16]).withheld)
    assert hub_only.owners[b"\xa2" * 16] < nobody.owners[b"\xa2" * 16]  # only if trusted
    both = QualityJudge(verdicts, [b"\x5a" * 16, b"\xb0" * 16])
    assert gate(events, funded, both.withheld).owners[b"\xa1" * 16] == 200  # not cleared
    # A prefix of the log (an earlier epoch) never pays more than the whole log does.
    judge = QualityJudge(verdicts, [b"\x5a" * 16])
    for cut in range(len(events)):
        earlier = gate(events[:cut], funded, QualityJudge(
            [v for v in verdicts if v.leaf < events[cut].leaf], [b"\x5a" * 16]).withheld)
        later = gate(events, funded, judge.withheld)
        for owner, amount in earlier.owners.items():
            assert later.owners[owner] >= amount


def test_an_epoch_naming_unsorted_or_malformed_validators_is_refused() -> None:
    fields = dict(epoch=1, checkpoint_size=1, balances_hash=b"\0" * 32, root=b"\0" * 32,
                  total_micro=0, owners=0, locked_micro=0, chain_id=1,
                  distributor=b"\0" * 20, rate=1, wallets=0, funding_block=1)
    body = PayoutEpoch(**fields, validators=(b"\x01" * 16, b"\x02" * 16))  # type: ignore
    assert PayoutEpoch.from_cbor_value(body.to_cbor_value()) == body
    for bad in ((b"\x02" * 16, b"\x01" * 16), (b"\x01" * 15,)):
        with pytest.raises(MalformedRecord):
            PayoutEpoch(**fields, validators=bad)  # type: ignore[arg-type]


@pytest.fixture
def quality_world(tmp_path: Path, broker: MosquittoBroker, chain: GanacheNode,
                  deployed: Deployment) -> Iterator[World]:
    trusted = f'quality_validators = ["{signer_id(TRUSTED.public_key).hex()}"]'
    for gateway in running_payout_gateway(tmp_path, broker, chain, deployed,
                                          extra_payout=trusted):
        world = World(gateway, broker, chain, deployed)
        try:
            for name, key, box in (("validator", TRUSTED, 0x23), ("hub", HUB, 0x24)):
                response = httpx.post(f"{world.base}/v1/recipients", headers=ADMIN, json={
                    "name": name, "signing_key": key.public_key.hex(),
                    "sealing_key": RecipientKey(Secret(bytes([box]) * 32)).public_key.hex()})
                assert response.status_code == 201, response.text
            yield world
        finally:
            world.devices.close()


def attest(world: World, key: SigningKey, state: str, start_ms: int, window_ms: int) -> None:
    """``key`` judges the world's device ``state`` in [start_ms, +window_ms), two others
    healthy (verdicts resting on no leaf: the gateway checks references only)."""
    device = world.parties.device.device_id
    sensors = sorted([SensorAttestation(device, state, ("bias",) if state == "faulty" else (),
                                        ()),
                      *(SensorAttestation(bytes([i]) * 16, "healthy", (), ()) for i in (1, 2))],
                     key=lambda s: s.device_id)
    body = QualityAttestation("tv-room", "climate", "Cel", start_ms, window_ms, None,
                              tuple(sensors))
    submitted(world.base, sign_document(body, key, world.parties.device.wall_ms))


def test_a_faulty_judged_sensor_earns_its_owner_nothing_for_that_window_and_verify_agrees(
        quality_world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = quality_world
    request = world.parties.request()
    submitted(world.base, request)
    world.fund(request, 100 * EARNED)
    submitted(world.base, world.parties.consent(request))
    world.use()  # no verdict yet: paid
    wall = world.parties.device.wall_ms
    attest(world, TRUSTED, "faulty", wall - 60_000, 60_001)  # the window holds `wall`
    attest(world, HUB, "healthy", wall - 60_000, 60_001)  # the owner's hub: does not count
    world.use()  # judged faulty: withheld
    world.parties.device.wall_ms = wall + 1_000
    attest(world, TRUSTED, "recovered", wall + 1, 60_000)
    world.use()  # recovered, outside the faulty window: paid

    save_owner_key(tmp_path / "owner.key", world.parties.owner)
    wallet_key = tmp_path / "wallet.key"
    write_secret_file(wallet_key, KEYS["owner_b"].value.hex().encode())
    wallet = address_of(KEYS["owner_b"])
    assert owner_main(["wallet", "bind", "--key", str(tmp_path / "owner.key"),
                       "--wallet-key", str(wallet_key), "--gateway", world.base,
                       "--rpc", world.chain.url]) == 0
    paid = 2 * EARNED * BASE_UNITS_PER_MICRO
    wait_for("an epoch paying the two healthy records", lambda: (
        r.status_code == 200 and int(r.json()["amount"]) == paid
        if (r := httpx.get(f"{world.base}/v1/payouts/proof/{wallet}")) else False))
    metrics = httpx.get(f"{world.base}/metrics").text
    assert f"edgeproof_gateway_payout_withheld_micro {float(EARNED)}" in metrics

    assert verify_main(["payout", "--gateway", world.base, "--rpc", world.chain.url,
                        "--json", "--gateway-key", world.verifier]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["quality_validators"] == [signer_id(TRUSTED.public_key).hex()]
    assert (report["total_micro"], report["locked_micro"]) == (2 * EARNED, EARNED)
