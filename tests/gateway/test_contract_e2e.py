"""The whole contract story end to end: the real agent (in this process, simulated DHT22)
behind the real broker and gateway. The company asks for climate; the owner consents to
temperature only; the gateway delivers the consent; the device seals a derived stream for
the company; the company opens temperature and never humidity; the owner revokes; the
device drops the grant at once; the audit shows all of it from logged leaves."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from agent.clock import SystemClock
from agent.config import parse_config
from agent.identity import create_identity
from agent.sensors import load_simulated_hardware
from agent.service import AgentService
from firmware_sim.broker import MosquittoBroker
from protocol.audit import verify_audit
from protocol.contract import Consent, DataRequest, Revocation, Terms
from protocol.documents import sign_document
from protocol.keys import OwnerKey, RecipientKey, SigningKey
from protocol.record import KeyEpoch
from protocol.signed import parse_signed_record
from tests.gateway.conftest import RunningGateway
from tests.gateway.contractkit import ADMIN, HOUR_MS, now_ms, submitted
from tests.gateway.gwkit import RATE
from tests.harness.waiting import eventually
from verifier.audit import build_audit
from verifier.client import DocumentClient
from verifier.recipient import open_records


class NtpSyncedClock(SystemClock):
    """The system clock as on a device whose kernel reports NTP synchronisation."""

    def wall_synced(self) -> bool:
        return True


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    eventually(predicate, "the condition", timeout, every_s=0.05)


def test_company_reads_temperature_only_until_the_owner_revokes_and_the_audit_shows_it(
        tmp_path: Path, broker: MosquittoBroker, gateway: RunningGateway) -> None:
    url = gateway.base_url
    owner, buyer, company = OwnerKey.generate(), SigningKey.generate(), RecipientKey.generate()
    state = tmp_path / "agent"
    cfg = parse_config({
        "agent": {"state_dir": str(state)}, "mqtt": {"broker": broker.url},
        "gateway": {"key": gateway.verifier},
        "outbox": {"commit_window_s": 0.1}, "uplink": {"batch_interval_s": 0.1},
        "owner": {"public_key": owner.public_key.hex(),
                  "sealing_key": owner.sealing_public_key.hex()},
        "sensors": [{"kind": "dht22", "stream": "climate", "pin": 4, "interval_s": 2.1}],
        "service": {"final_flush_s": 30.0},
    }, state)
    identity = create_identity(cfg.key_file)
    response = httpx.post(f"{url}/v1/devices", headers=ADMIN, json={
        "name": "e2e", "public_key": identity.key.public_key.hex(), "owner": "olga",
        "rate_micro_per_hour": RATE, "owner_key": owner.public_key.hex(),
        "owner_sealing_key": owner.sealing_public_key.hex()})
    assert response.status_code == 201, response.text
    device_id = identity.device_id
    assert httpx.post(f"{url}/v1/recipients", headers=ADMIN, json={
        "name": "company", "signing_key": buyer.public_key.hex(),
        "sealing_key": company.public_key.hex()}).status_code == 201
    clock = NtpSyncedClock()
    sim = load_simulated_hardware(3, state, clock)
    service = AgentService(cfg, clock, sim=sim)
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,))
    service.start()
    runner.start()
    client = DocumentClient(url)

    def streams() -> list[str]:
        return [r.stream for r in client.all_device_records(device_id)]

    try:
        wait_for(lambda: "climate" in streams())
        start = now_ms() - HOUR_MS
        terms = Terms((("climate", ("%RH", "Cel")),), 0, start, start + 24 * HOUR_MS)
        request = sign_document(DataRequest(company.public_key, (device_id,), (), terms,
                                            "indoor temperature", 20_000), buyer, now_ms())
        submitted(url, request)
        consent = sign_document(Consent(request.id, company.public_key, (device_id,), Terms(
            (("climate", ("Cel",)),), 0, start, start + 24 * HOUR_MS)), owner.signing,
            now_ms())
        submitted(url, consent)
        wait_for(lambda: sum(s.startswith("climate~") for s in streams()) >= 2)
        submitted(url, sign_document(Revocation(consent.id, 1, "owner"), owner.signing,
                                     now_ms()))

        def epochs() -> list[tuple[int, KeyEpoch]]:
            out = []
            for r in client.all_device_records(device_id):
                body = parse_signed_record(r.record)[1].body
                if isinstance(body, KeyEpoch):
                    out.append((r.seq, body))
            return out

        wait_for(lambda: bool(epochs()) and epochs()[-1][1].consents == ()
                 and any(e.consents for _, e in epochs()))
        revoked_at = epochs()[-1][0]
        wait_for(lambda: sum(s == "climate" for s in streams()[revoked_at:]) >= 2)
    finally:
        stop.set()
        runner.join(30)
        sim.close()

    records = client.all_device_records(device_id)
    keys = client.device_keys(device_id)
    opened = open_records(records, keys, company)
    derived = [o for o in opened if o.stream.startswith("climate~")]
    assert derived
    assert all(o.status == "decrypted" for o in derived)
    assert all([m.unit for m in o.values] == ["Cel"] for o in derived)  # never humidity
    assert all(o.status == "not_granted" for o in opened if o.stream == "climate")
    assert all(o.seq < revoked_at for o in derived)  # nothing after the revocation
    for_owner = [o for o in open_records(records, keys, owner.sealing) if o.stream == "climate"]
    assert for_owner
    assert all({m.unit for m in o.values} == {"Cel", "%RH"} for o in for_owner)

    store = gateway.service.store
    wait_for(lambda: (c := store.latest_checkpoint()) is not None and c.size == store.size())
    audit = verify_audit(build_audit(client, device_id, 0, now_ms() + HOUR_MS,
                                     gateway.verifier), gateway.verifier, owner.public_key)
    [grant] = audit.grants
    assert grant.consent.id == consent.id
    assert grant.epochs
    assert grant.revocation is not None
