"""Consents, grants and revocations end to end: a real agent, Mosquitto and gateway.

Each test provisions a fleet (tests.harness.testbed) with one simulated device with a DHT22
whose owner key is pinned at enrolment (``device add --owner-key``), registers a company as
a recipient, and goes the real way: the company's signed request and the owner's consents
and revocations are submitted to the gateway, which logs them and delivers them to the
device. Forged documents go straight onto the device's policy topic from a party with the
gateway's broker rights (tests.harness.policy), as a dishonest gateway or operator could.
What the gateway logged is read through its public HTTP API and opened with each party's
REAL X25519 key (verifier.recipient, the code a recipient runs).
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.status import collect_status
from protocol.contract import Consent, DataRequest, Revocation, Terms
from protocol.documents import Document, sign_document
from protocol.errors import StorageError
from protocol.keys import OwnerKey, RecipientKey, Secret, SigningKey, load_recipient_key
from protocol.record import Gap, KeyEpoch, Record
from protocol.signed import parse_signed_record
from provisioning.fleet import GATEWAY_KEY
from tests.harness.invariants import WireObserver
from tests.harness.policy import PolicyPusher
from tests.harness.testbed import AgentProcess, AgentSpec, SensorSpec, Testbed
from tests.harness.waiting import eventually
from verifier.client import DocumentClient, GatewayClient, LoggedRecord
from verifier.recipient import Opened, open_records

RATE_S = 5  # the consent's min_interval_s; the DHT22 reads every 2.5 s
HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Bed:
    """The testbed, its one device, the parties and their real keys."""

    tb: Testbed
    agent: AgentProcess
    device_id: bytes
    owner: OwnerKey
    company: RecipientKey
    company_signing: SigningKey
    pusher: PolicyPusher
    gateway: GatewayClient
    documents: DocumentClient
    counter: int = 0

    def request(self) -> Document:
        """The company's request for climate (both fields) at most every RATE_S, logged."""
        wait_for("climate records at the gateway (a request needs the stream)",
                 lambda: any(r.stream == "climate" for r in self.records()))
        start = now_ms() - 60_000
        doc = sign_document(DataRequest(
            self.company.public_key, (self.device_id,), (),
            Terms((("climate", ("%RH", "Cel")),), RATE_S, start, start + HOUR_MS),
            "indoor climate study", 1000), self.company_signing, now_ms())
        self.submit(doc)
        return doc

    def consent(self, request: Document, signer: SigningKey | None = None) -> Document:
        """A consent to temperature only (never humidity), at the request's rate."""
        body = request.body
        assert isinstance(body, DataRequest)
        terms = Terms((("climate", ("Cel",)),), RATE_S, body.terms.not_before_ms,
                      body.terms.not_after_ms)
        return sign_document(Consent(request.id, self.company.public_key, (self.device_id,),
                                     terms), signer or self.owner.signing, now_ms())

    def revocation(self, consent: Document) -> Document:
        self.counter += 1
        return sign_document(Revocation(consent.id, self.counter, "owner"),
                             self.owner.signing, now_ms())

    def submit(self, doc: Document) -> int:
        """Submit to the gateway (it logs and delivers); return the leaf index."""
        index, _ = self.documents.submit(doc.raw)
        return index

    def grants(self) -> dict[str, object]:
        """The device's grant book as ``edgeproof-agent status`` shows it ({} before any)."""
        try:
            status = collect_status(self.agent.state_dir)["grants"]
        except StorageError:  # the agent has not opened its outbox yet
            return {}
        return status if isinstance(status, dict) else {}

    def logged(self) -> list[LoggedRecord]:
        return self.gateway.all_device_records(self.device_id)

    def records(self) -> list[Record]:
        return [parse_signed_record(r.record)[1] for r in self.logged()]

    def open_as(self, who: RecipientKey) -> list[Opened]:
        return open_records(self.logged(), self.gateway.device_keys(self.device_id), who)


def wait_for(what: str, predicate: Callable[[], bool], timeout_s: float = 90.0) -> None:
    """Poll until ``predicate`` holds; fail naming ``what`` (a generous bound, never a
    measurement)."""
    eventually(predicate, what, timeout_s, every_s=0.2)


def gateway_signing_key(tb: Testbed) -> SigningKey:
    """The gateway's real Ed25519 key, from its C2SP key file (``...+base64(0x01||seed)``)."""
    text = (tb.fleet / GATEWAY_KEY).read_text().strip()
    raw = base64.b64decode(text.split("+", 4)[4])  # a name holds no "+"; base64 may
    return SigningKey(Secret(raw[1:]))


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    owner = OwnerKey.generate()
    # The operator also names a recipient of its choice in the device's config.
    spec = AgentSpec("dev", sensors=(SensorSpec("dht22", "climate", 2.5, pin=4),),
                     owner=owner, clock_synced=True, recipients=("operator-pick",))
    tb = Testbed(tmp_path / "tb")
    pusher = None
    try:
        tb.start()
        tb.stack.add_recipient("operator-pick")
        company = load_recipient_key(tb.stack.add_recipient("company"))
        company_signing = SigningKey.generate()
        tb.stack.provision("recipient", "register", "company", "--signing-key",
                           company_signing.public_key.hex(), "--fleet", str(tb.fleet))
        pusher = PolicyPusher(tb.broker_port, *tb.gateway_rights_login("pusher"))
        agent = tb.add_agent(spec)
        agent.start()
        device_id = bytes.fromhex(agent.device_id)
        # Subscribed to its policy topic: the device asks for its documents (a sync).
        wait_for("the device's first policy sync", lambda: pusher.sync_count(device_id) > 0)
        yield Bed(tb, agent, device_id, owner, company, company_signing, pusher,
                  GatewayClient(tb.gateway_url), DocumentClient(tb.gateway_url))
    finally:
        if pusher is not None:
            pusher.close()
        tb.close()


def derived(records: list[Record]) -> list[Record]:
    return [r for r in records if "~" in r.stream]


def decrypted(opened: list[Opened]) -> list[Opened]:
    return [o for o in opened if o.status == "decrypted"]


def test_consent_from_gateway_operator_or_other_owner_is_refused_by_device(bed: Bed) -> None:
    request = bed.request()
    forged = [bed.consent(request, gateway_signing_key(bed.tb)),  # the gateway's own key
              bed.consent(request, SigningKey.generate()),         # an operator's key
              bed.consent(request, OwnerKey.generate().signing)]   # another owner's key
    # The gateway refuses to log them (not_owner); delivered anyway, over its broker login:
    bed.pusher.push(bed.device_id, forged)
    wait_for("three refusals", lambda: bed.grants().get("refused") == {"unsigned_policy": 3})
    assert bed.grants()["grants"] == []
    # The owner's own consent afterwards proves the device was listening all along.
    bed.submit(bed.consent(request))
    wait_for("derived records at the gateway", lambda: len(derived(bed.records())) >= 2)
    epochs = [r.body for r in bed.records() if isinstance(r.body, KeyEpoch)]
    named = {h for e in epochs for _, h in e.consents}
    assert named.isdisjoint({d.id for d in forged})
    assert not any(o.status == "decrypted" for o in bed.open_as(RecipientKey.generate()))


def test_recipient_the_operator_configured_reads_nothing_of_an_owned_device(bed: Bed) -> None:
    wait_for("climate readings", lambda: sum(
        1 for r in bed.records() if r.stream == "climate") >= 2)
    pick = load_recipient_key(bed.tb.fleet / "recipients" / "operator-pick.key")
    opened = bed.open_as(pick)
    assert opened
    assert {o.status for o in opened} == {"not_granted"}
    owner = [o for o in bed.open_as(bed.owner.sealing) if o.stream == "climate"]
    assert {o.status for o in owner} == {"decrypted"}


def test_recipient_never_opens_a_field_or_a_rate_it_did_not_get(bed: Bed) -> None:
    consent = bed.consent(bed.request())
    bed.submit(consent)
    wait_for("four derived records at the gateway", lambda: len(derived(bed.records())) >= 4)
    opened = bed.open_as(bed.company)
    got = decrypted(opened)
    assert {o.stream for o in got} == {f"climate~{consent.id[:6].hex()}"}
    assert {m.unit for o in got for m in o.values} == {"Cel"}  # never humidity
    assert {o.status for o in opened if o.stream == "climate"} == {"not_granted"}
    granted = derived(bed.records())
    spacing = [b.mono_ms - a.mono_ms for a, b in itertools.pairwise(granted)
               if a.boot == b.boot]
    assert spacing
    assert min(spacing) >= RATE_S * 1000
    full = [o for o in decrypted(bed.open_as(bed.owner.sealing)) if o.stream == "climate"]
    assert len(full) > len(got)  # the owner reads every reading, with humidity
    assert all({m.unit for m in o.values} == {"Cel", "%RH"} for o in full)


def test_revoked_recipient_decrypts_nothing_sampled_after_revocation(bed: Bed) -> None:
    consent = bed.consent(bed.request())
    bed.submit(consent)
    wait_for("derived records", lambda: len(derived(bed.records())) >= 2)
    bed.submit(bed.revocation(consent))
    wait_for("the revocation applied", lambda: bed.grants().get("grants") == [])
    applied_ms = int(time.time() * 1000)
    wait_for("readings after the revocation", lambda: sum(
        1 for r in bed.records() if r.stream == "climate" and r.wall_ms > applied_ms) >= 4)
    got = decrypted(bed.open_as(bed.company))
    assert got  # it did read before
    assert all(o.wall_ms < applied_ms for o in got)
    epochs = [r for r in bed.records() if isinstance(r.body, KeyEpoch)]
    assert isinstance(epochs[-1].body, KeyEpoch)
    assert epochs[-1].body.consents == ()  # the last epoch names no consent any more
    after = [r for r in bed.records() if r.seq > epochs[-1].seq and r.stream == "climate"]
    assert after
    assert not any(o.status == "decrypted" for o in bed.open_as(bed.company)
                   if o.seq > epochs[-1].seq)


def test_offline_device_applies_revocation_before_sending_anything_sealed_to_recipient(
        bed: Bed) -> None:
    consent = bed.consent(bed.request())
    bed.submit(consent)
    wait_for("derived records", lambda: len(derived(bed.records())) >= 2)
    observer = WireObserver(bed.tb.broker_port, *bed.tb.observer_broker_login())
    try:
        bed.tb.cut(["dev"])
        made = _granted_records_made(bed)  # status.json lags up to 1 s: one may predate the cut
        wait_for("three derived records since the cut (two at least while offline)",
                 lambda: _granted_records_made(bed) >= made + 3)
        revoked_ms = now_ms()
        bed.submit(bed.revocation(consent))  # logged; the device is away
        syncs = bed.pusher.sync_count(bed.device_id)
        # Published before the cut (and maybe logged, its receipt lost) is not "sent after":
        # only what first appears on the wire after the reconnect counts.
        before = set(observer.of_device(bed.device_id))
        bed.tb.restore(["dev"])
        wait_for("a sync after the reconnect", lambda: bed.pusher.sync_count(bed.device_id)
                 > syncs)
        wait_for("revoked gaps at the gateway", lambda: any(
            isinstance(r.body, Gap) and r.body.reason == "revoked" for r in bed.records()))
        wait_for("readings after the reconnect", lambda: sum(
            1 for r in bed.records() if r.stream == "climate" and r.wall_ms > revoked_ms) >= 3)
        sent_after = set(observer.of_device(bed.device_id)) - before
    finally:
        observer.close()
    records = bed.records()
    late = [r for r in derived(records) if r.wall_ms >= revoked_ms]
    assert late == []  # nothing sealed to it after the revocation reached the gateway
    withdrawn = {s for r in records if isinstance(r.body, Gap) and r.body.reason == "revoked"
                 for s in range(r.body.first_seq, r.body.last_seq + 1)}
    assert len(withdrawn) >= 2
    assert withdrawn.isdisjoint(sent_after)  # nothing sealed to it left after the reconnect
    assert all(o.wall_ms < revoked_ms for o in decrypted(bed.open_as(bed.company)))


def _granted_records_made(bed: Bed) -> int:
    try:
        agent = collect_status(bed.agent.state_dir)["agent"]
    except StorageError:
        return 0
    assert isinstance(agent, dict)
    grants = agent.get("grants")
    if not isinstance(grants, dict):
        return 0
    writer = grants.get("writer")
    return int(writer.get("granted_records", 0)) if isinstance(writer, dict) else 0
