"""Consent gating (docs/PROTOCOL.md §19.4), recomputed from a real gateway's log and the
distributor's Funded events on a real ganache node, and the rule's invariants on random logs.

The gateway logs usage records (MQTT from a test device), the owner's consents and
revocations (POST /v1/documents); a company funds the distributor for its request's terms;
:func:`verifier.gating.recompute` reads all of it back (signatures verified) and gates it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By

from agent.policy import PolicyInbox
from agent.uplink.settings import GatewayKey
from firmware_sim.broker import MosquittoBroker
from firmware_sim.chain import REPO_ROOT, GanacheNode
from firmware_sim.solidity import Deployment, address_of
from owner.cli import main as owner_main
from protocol.contract import Lapse
from protocol.delivery import PolicyDelivery, policy_topic
from protocol.documents import Document, verify_document
from protocol.errors import VerificationError
from protocol.keys import save_owner_key, signer_id, write_secret_file
from protocol.record import credit_micro
from rewards.documents import BASE_UNITS_PER_MICRO
from rewards.gating import ConsentLeaf, Event, Gated, RevocationLeaf, UsageLeaf, gate
from tests.agent.mqtt_watch import Watcher
from tests.agent.test_policy import Device as PolicyDevice
from tests.gateway.conftest import RunningGateway
from tests.gateway.contractkit import Parties, now_ms, submitted
from tests.gateway.gwkit import RATE, DeviceClient
from tests.harness.browser import chromium, console_errors, table_rows, wait_until
from tests.rewards.conftest import KEYS
from tests.rewards.test_payout_end_to_end import wait_for
from verifier.cli import main as verify_main
from verifier.client import DocumentClient
from verifier.gating import Chain, check_shortfall, recompute

USED_MS = 30_000  # each usage record: 30 s of use
EARNED = credit_micro(USED_MS, RATE)


class World:
    """A device with an owner and a company at a real gateway, a funded distributor."""

    def __init__(self, gateway: RunningGateway, broker: MosquittoBroker, chain: GanacheNode,
                 deployed: Deployment) -> None:
        self.base, self.chain, self.deployed = gateway.base_url, chain, deployed
        self.verifier = gateway.verifier
        self.devices = DeviceClient(broker.port, gateway.verifier)
        self.parties = Parties.enrol(self.base, self.devices, seed=31, owner_by_id=True)
        self.parties.device.wall_ms = now_ms()  # inside the consents' periods
        self.parties.device.mono_ms = 1_000_000
        self.batch = 10
        self.company = address_of(KEYS["company"])
        deployed.give(self.company, 10**24)

    def use(self) -> None:
        """The TV is used for USED_MS: one usage record, logged."""
        device = self.parties.device
        device.mono_ms += USED_MS
        self.batch += 1
        self.devices.send(device, [device.usage(device.mono_ms - USED_MS, device.mono_ms,
                                                USED_MS).raw], self.batch)
        self.devices.wait_for(device.device_id, self.batch)

    def fund(self, request: Document, micro: int) -> None:
        self.deployed.fund(KEYS["company"], micro * BASE_UNITS_PER_MICRO, request.id)

    def recompute(self, client: DocumentClient | None = None, *, scan: bool = True) -> Gated:
        """Gate the log up to a checkpoint covering everything logged so far (each leaf
        proven in it, the log scanned)."""
        size = int(httpx.get(f"{self.base}/v1/stats").json()["log_size"])
        reader = client or DocumentClient(self.base)

        def covered() -> Gated | None:
            at, gated = recompute(reader, self.deployed.rpc, self.deployed.distributor,
                                  BASE_UNITS_PER_MICRO, gateway_key=self.verifier,
                                  scan=scan)
            return gated if at >= size else None

        found: Gated = wait_for("a checkpoint covering the log", covered)
        return found

    @property
    def owner_id(self) -> bytes:
        return signer_id(self.parties.owner.signing.public_key)


@pytest.fixture
def world(payout_gateway: RunningGateway, broker: MosquittoBroker, chain: GanacheNode,
          deployed: Deployment) -> Iterator[World]:
    made = World(payout_gateway, broker, chain, deployed)
    try:
        yield made
    finally:
        made.devices.close()


def test_gated_epoch_pays_the_wallet_only_consented_funded_credit_and_verify_recomputes_it(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request = world.parties.request()
    submitted(world.base, request)
    world.fund(request, 100 * EARNED)
    world.use()  # no consent yet: locked
    consent = world.parties.consent(request)
    submitted(world.base, consent)
    world.use()
    submitted(world.base, world.parties.revocation(consent))
    world.use()  # revoked: locked
    save_owner_key(tmp_path / "owner.key", world.parties.owner)
    wallet_key = tmp_path / "wallet.key"
    write_secret_file(wallet_key, KEYS["owner_b"].value.hex().encode())
    wallet = address_of(KEYS["owner_b"])
    endpoints = ["--wallet-key", str(wallet_key), "--gateway", world.base,
                 "--rpc", world.chain.url]
    assert owner_main(["wallet", "bind", "--key", str(tmp_path / "owner.key"),
                       *endpoints]) == 0
    paid = EARNED * BASE_UNITS_PER_MICRO
    wait_for("an epoch paying the consented credit", lambda: (
        r.status_code == 200 and int(r.json()["amount"]) == paid
        if (r := httpx.get(f"{world.base}/v1/payouts/proof/{wallet}")) else False))
    assert owner_main(["wallet", "claim", *endpoints, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["balance"] == str(paid)
    assert world.deployed.balance(wallet) == paid
    assert owner_main(["wallet", "claim", *endpoints]) == 1  # nothing is paid twice
    assert "nothing to claim" in capsys.readouterr().err
    assert world.deployed.balance(wallet) == paid

    assert verify_main(["payout", "--gateway", world.base, "--rpc", world.chain.url,
                        "--json", "--gateway-key", world.verifier]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["consent_gated"] is True
    assert report["total_micro"] == EARNED
    assert report["locked_micro"] == 2 * EARNED


def test_credit_without_consent_stays_locked_and_a_revocation_stops_it_counting(
        world: World) -> None:
    request = world.parties.request()
    submitted(world.base, request)
    world.fund(request, 100 * EARNED)
    world.use()  # before any consent: locked
    consent = world.parties.consent(request)
    submitted(world.base, consent)
    world.use()  # consent in force: paid
    world.use()
    submitted(world.base, world.parties.revocation(consent))
    world.use()  # revoked mid-epoch: locked from the revocation's leaf on

    gated = world.recompute()
    assert gated.settled_micro == 4 * EARNED
    assert gated.owners == {world.owner_id: 2 * EARNED}
    assert gated.paid == {request.id: 2 * EARNED}
    assert gated.locked_micro == 2 * EARNED
    assert gated.short_at == {}


def test_a_company_is_never_paid_beyond_its_funding_and_more_funding_lowers_no_amount(
        world: World) -> None:
    rich, poor = world.parties.request(), world.parties.request(hours=25)
    for request in (rich, poor):
        submitted(world.base, request)
        submitted(world.base, world.parties.consent(request))
    world.fund(rich, 100 * EARNED)
    world.fund(poor, EARNED // 2 + 1)  # less than its half of two records
    world.use()
    world.use()

    before = world.recompute()  # each record's credit is split over the two requests
    assert before.earned[poor.id] > EARNED // 2 + 1
    assert before.paid[poor.id] == EARNED // 2 + 1
    assert poor.id in before.short_at
    assert before.paid[rich.id] <= 100 * EARNED
    assert before.locked_micro == 2 * EARNED - sum(before.paid.values())

    world.fund(poor, 10 * EARNED)  # the company tops up: the cap moves, nothing decreases
    after = world.recompute()
    assert after.owners[world.owner_id] == 2 * EARNED
    assert after.owners[world.owner_id] >= before.owners[world.owner_id]
    assert after.locked_micro == 0


def random_log(rng: random.Random, n: int) -> list[Event]:
    devices = [bytes([d]) * 16 for d in range(3)]
    requests = [bytes([r]) * 32 for r in range(3)]
    events: list[Event] = []
    consents: list[bytes] = []
    for leaf in range(n):
        roll = rng.random()
        if roll < 0.15:
            consent = leaf.to_bytes(32, "big")
            consents.append(consent)
            events.append(ConsentLeaf(leaf, consent, bytes([rng.randrange(2)]) * 16,
                                      rng.choice(requests),
                                      frozenset(rng.sample(devices, rng.randint(1, 3))),
                                      0, rng.choice((10**13, 500))))
        elif roll < 0.25 and consents:
            events.append(RevocationLeaf(leaf, rng.choice(consents)))
        else:
            events.append(UsageLeaf(leaf, rng.choice(devices), rng.randrange(1000),
                                    rng.randrange(10_000)))
    return events


@pytest.mark.parametrize("seed", range(20))
def test_random_logs_never_pay_beyond_funding_twice_or_less_than_before(seed: int) -> None:
    rng = random.Random(seed)
    events = random_log(rng, 300)
    funded = {bytes([r]) * 32: rng.randrange(200_000) for r in range(3)}
    whole = gate(events, funded)
    for request, paid in whole.paid.items():
        assert paid <= funded[request]
        assert paid == min(funded[request], whole.earned[request])
    assert whole.total_micro + whole.locked_micro == whole.settled_micro
    # The log grows and the funding grows: no owner's cumulative amount ever decreases.
    prefix = gate(events[:150], funded)
    richer = gate(events, {r: f + rng.randrange(50_000) for r, f in funded.items()})
    for owner, amount in prefix.owners.items():
        assert whole.owners.get(owner, 0) >= amount
    for owner, amount in whole.owners.items():
        assert richer.owners.get(owner, 0) >= amount


def vector_event(entry: dict[str, Any]) -> Event:
    leaf = int(entry["leaf"])
    if "usage" in entry:
        u = entry["usage"]
        return UsageLeaf(leaf, bytes.fromhex(u["device"]), u["wall_ms"], u["credit_micro"])
    if "consent" in entry:
        c = entry["consent"]
        return ConsentLeaf(leaf, bytes.fromhex(c["id"]), bytes.fromhex(c["owner"]),
                           bytes.fromhex(c["request"]),
                           frozenset(bytes.fromhex(d) for d in c["devices"]),
                           c["not_before_ms"], c["not_after_ms"])
    return RevocationLeaf(leaf, bytes.fromhex(entry["revocation"]["consent"]))


def test_the_hand_worked_vector_is_what_the_rule_pays() -> None:
    vector = json.loads((REPO_ROOT / "tests" / "vectors" / "consent_gating.json").read_text())
    funded = {bytes.fromhex(k): v for k, v in vector["funded_micro"].items()}
    gated = gate([vector_event(e) for e in vector["events"]], funded)
    expected = vector["expected"]
    hexed = {name: {k.hex(): v for k, v in getattr(gated, name).items()}
             for name in ("owners", "earned", "paid", "short_at")}
    assert hexed == {name: expected[name] for name in hexed}
    assert (gated.settled_micro, gated.locked_micro) == (expected["settled_micro"],
                                                         expected["locked_micro"])


def lapse_metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(f"edgeproof_gateway_payout_{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_short_requests_lapsable_consent_lapses_once_and_the_device_stops_sealing_to_it(
        world: World, broker: MosquittoBroker, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    watcher = Watcher(f"mqtt://127.0.0.1:{broker.port}",
                      policy_topic(world.parties.device.device_id))
    poor, stingy = world.parties.request(), world.parties.request(hours=25)
    submitted(world.base, poor)
    submitted(world.base, stingy)
    lapsable = world.parties.consent(poor, lapses=True)
    kept = world.parties.consent(stingy)  # its owner did not allow a lapse
    submitted(world.base, lapsable)
    submitted(world.base, kept)
    world.fund(poor, 1)
    world.fund(stingy, 1)
    world.use()
    world.use()
    device_id = world.parties.device.device_id.hex()

    def delivered() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = httpx.get(
            f"{world.base}/v1/devices/{device_id}/documents").json()
        return found if any(d["type"] == "lapse" for d in found) else None

    docs = wait_for("a lapse notice delivered to the device", delivered)
    notices = [d for d in docs if d["type"] == "lapse"]
    assert [n["ref"] for n in notices] == [lapsable.id.hex()]
    gateway_key = GatewayKey.from_text(world.verifier).public_key
    notice = verify_document(bytes.fromhex(notices[0]["document"]), gateway_key, "lapse")
    assert isinstance(notice.body, Lapse)
    assert notice.body.consent == lapsable.raw

    def pushed(latest: dict[str, bytes]) -> bool:  # the courier pushes it to the device
        return any(notice.raw == raw for payload in latest.values()
                   for _, raw in PolicyDelivery.from_cbor(payload).documents)

    try:
        assert watcher.wait_for(pushed)
    finally:
        watcher.stop()
    wait_for("a later epoch", lambda: lapse_metric(
        world.base, "short_consents_without_lapse_term") == 1)
    assert lapse_metric(world.base, "lapses_total") == 1  # once per consent

    gated = world.recompute()  # each notice checked against the chain; acts as a revocation
    assert set(gated.short_at) == {poor.id, stingy.id}
    assert gated.owners == {world.owner_id: 2}  # each request paid what it funded, no more
    save_owner_key(tmp_path / "owner.key", world.parties.owner)
    write_secret_file(tmp_path / "wallet.key", KEYS["owner_a"].value.hex().encode())
    assert owner_main(["wallet", "bind", "--key", str(tmp_path / "owner.key"), "--wallet-key",
                       str(tmp_path / "wallet.key"), "--gateway", world.base,
                       "--rpc", world.chain.url]) == 0
    wait_for("a posted epoch", lambda: httpx.get(
        f"{world.base}/v1/payouts/latest").status_code == 200)
    assert verify_main(["payout", "--gateway", world.base, "--rpc", world.chain.url,
                        "--gateway-key", world.verifier]) == 0
    audit = ["audit", "--gateway", world.base, "--device", device_id, "--gateway-key",
             world.verifier, "--owner-key", world.parties.owner.public_key.hex(), "--json"]
    wait_for("the notice under a checkpoint", lambda: verify_main(audit) == 0)
    ended = {g["consent"]: g["ended"] for g in json.loads(
        capsys.readouterr().out.strip().splitlines()[-1])["grants"]}
    assert ended[lapsable.id.hex()]["by"] == "lapse"  # the audit shows what ended it
    assert ended[kept.id.hex()]["by"] == "not ended"

    # The device (its real policy inbox and grant book) applies what the gateway delivers.
    device = PolicyDevice(tmp_path)
    device.clock.advance(now_ms() - device.clock.wall_ms())
    inbox = PolicyInbox(device.book, device.outbox, device_id=world.parties.device.device_id,
                        owner=world.parties.owner.public_key, streams={"climate"},
                        clock=device.clock, gateway=gateway_key)
    delivery = PolicyDelivery(tuple((d["index"], bytes.fromhex(d["document"])) for d in docs),
                              docs[-1]["index"] + 1, True)
    assert inbox.deliver(delivery.to_cbor())
    assert [g.consent_hash for g in device.book.grants()] == [kept.id]
    assert device.book.is_revoked(lapsable.id)
    assert device.book.accepted["lapses"] == 1
    assert device.book.refused == {}


def test_a_lapse_notice_the_chain_does_not_bear_out_fails_verification(
        chain: GanacheNode, deployed: Deployment) -> None:
    request, device = b"\x07" * 32, b"\x01" * 16
    events: list[Event] = [ConsentLeaf(0, b"\x0c" * 32, b"\x0a" * 16, request,
                                       frozenset({device}), 0, 10**15),
                           UsageLeaf(1, device, 5, 10), UsageLeaf(2, device, 6, 10)]
    company = address_of(KEYS["company"])
    deployed.give(company, 10**24)
    deployed.fund(KEYS["company"], 15 * BASE_UNITS_PER_MICRO, request)  # 15 of 20 earned
    short_block = deployed.rpc.block_number()
    deployed.fund(KEYS["company"], 100 * BASE_UNITS_PER_MICRO, request)  # topped up later
    on_chain = Chain(deployed.rpc, deployed.distributor, BASE_UNITS_PER_MICRO, chain.chain_id)

    def notice(short_at: int, block: int, distributor: str = deployed.distributor) -> Lapse:
        return Lapse(b"consent bytes", request, short_at, block, chain.chain_id,
                     bytes.fromhex(distributor[2:]))

    check_shortfall(events, 3, notice(2, short_block), on_chain)  # true then: it stands
    for false in (notice(1, short_block),  # not short yet at leaf 1
                  notice(2, deployed.rpc.block_number()),  # covered at that block
                  notice(2, short_block, "0x" + "11" * 20)):  # another distributor
        with pytest.raises(VerificationError):
            check_shortfall(events, 3, false, on_chain)


def test_dashboard_lists_lapse_notices_a_page_at_a_time_as_the_api_decodes_them(
        world: World) -> None:
    poor = world.parties.request()
    submitted(world.base, poor)
    lapsable = [world.parties.consent(poor, fields=(f,), lapses=True) for f in ("Cel", "%RH")]
    for consent in lapsable:
        submitted(world.base, consent)
    world.fund(poor, 1)
    world.use()
    url = f"{world.base}/v1/dashboard/lapses"
    rows = wait_for("two lapse notices", lambda: (
        found if len(found := httpx.get(url).json()) == 2 else None))
    listed = httpx.get(f"{world.base}/v1/documents", params={"type": "lapse"}).json()
    assert [(r["index"], r["id"], r["consent"]) for r in rows] == [
        (d["index"], d["id"], d["ref"]) for d in listed]
    assert {r["consent"] for r in rows} == {c.id.hex() for c in lapsable}
    device = world.parties.device
    for row, doc in zip(rows, listed, strict=True):
        body = verify_document(bytes.fromhex(doc["document"]),
                               GatewayKey.from_text(world.verifier).public_key, "lapse").body
        assert isinstance(body, Lapse)
        assert (row["request"], row["short_at"], row["funding_block"], row["distributor"]) == (
            poor.id.hex(), body.short_at, body.funding_block, "0x" + body.distributor.hex())
        assert [(d["device_id"], d["name"]) for d in row["devices"]] == [
            (device.device_id.hex(), device.name)]
    # Paged by leaf index, like /v1/documents: one at a time covers both, once each.
    first = httpx.get(url, params={"limit": 1}).json()
    second = httpx.get(url, params={"limit": 1, "after": first[0]["index"]}).json()
    assert first + second == rows
    assert httpx.get(url, params={"after": rows[-1]["index"]}).json() == []
    assert httpx.get(url, params={"limit": 201}).status_code == 400
    with chromium() as browser:
        browser.get(f"{world.base}/dashboard")
        cells = "#lapses-table tbody tr"

        def shown() -> list[list[str]]:
            return table_rows(browser, cells)
        wait_until(lambda: len(shown()) == 2, 30, "the lapse notices table")
        page = shown()
        assert [int(r[0].replace(",", "")) for r in page] == [r["index"] for r in rows]
        assert [(r[1].rstrip("…"), r[2].rstrip("…"), r[3].rstrip("…")) for r in page] == [
            (r["id"][:16], r["consent"][:16], r["request"][:16]) for r in rows]
        assert [(int(r[4].replace(",", "")), int(r[5].replace(",", ""))) for r in page] == [
            (r["short_at"], r["funding_block"]) for r in rows]
        assert [r[6] for r in page] == [f"{device.name} · {device.device_id.hex()}"] * 2
        assert browser.find_element(By.ID, "lapses-page").text == "(1–2)"
        assert console_errors(browser) == []
