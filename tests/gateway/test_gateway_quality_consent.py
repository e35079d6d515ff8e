"""A company validates a site through its owner's consents (docs/PROTOCOL.md §20, §5.5):
the devices pin an owner, so their climate stream is sealed to the owner only and the
company reads the derived records each consent makes (``climate~<consent tag>``). On a
real gateway and broker: with consents for every sensor, ``edgeproof-validator`` run with
the company's keys finds the derived streams, judges the site and its faulty verdict is
logged (and counts in the payout's quality rule when the operator trusts it); without a
consent for one sensor that sensor's leaves are ``not_readable`` and nothing is logged;
a leaf of a device outside the site, read under the company's own consent for it, is
refused under a site sensor's verdict, and the validator never reads such a device; after a
revocation the validator stops with one line rather than judge the sensor a dropout."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest

from gateway.payout_gating import IncrementalGating
from protocol.contract import Consent, DataRequest, Revocation, Terms
from protocol.documents import Document, parse_document, sign_document
from protocol.grants import derived_stream
from protocol.keys import (
    OwnerKey,
    RecipientKey,
    Secret,
    SigningKey,
    save_recipient_key,
    save_signing_key,
    signer_id,
)
from protocol.quality import QualityAttestation, SensorAttestation
from protocol.record import KEYS_STREAM, Measurement, Record, Values
from protocol.sealing import EpochKeys, new_key_epoch, seal_record
from protocol.signed import sign_record
from provisioning.sites import Site, SiteSensor, render
from rewards.gating import UsageLeaf
from tests.gateway.conftest import RunningGateway
from tests.gateway.contractkit import ADMIN, rejections, submit, submitted
from tests.gateway.gwkit import RATE, DeviceClient, TestDevice
from validator.attest import sign_attestation
from validator.cli import main as validator_main

T0_MS = 1_700_000_280_000  # on a 3-minute boundary (a window)
MINUTE_MS = 60_000
WINDOW_S = 180  # three readings a window: four windows in twelve minutes
OFFSETS = (0, 1, 20, 2)  # tenths of °C: the third sensor reads 2.0 °C high; the fourth is
#                          a device outside the site


@dataclass
class Company:
    """An owner's four climate devices (three in the site, one elsewhere) and a company
    registered as a recipient, with the leaves of the derived records it can read."""

    base_url: str
    owner: OwnerKey
    signing: SigningKey
    box: RecipientKey
    devices: list[TestDevice]
    consents: dict[bytes, Document] = field(default_factory=dict)  # device id -> consent
    derived: dict[bytes, list[int]] = field(default_factory=dict)  # device id -> leaves

    @property
    def site(self) -> list[TestDevice]:
        return self.devices[:3]

    def request(self) -> Document:
        terms = Terms((("climate", ("Cel",)),), 0, T0_MS - 3_600_000,
                      T0_MS + 10 ** 12)  # open well past the test's wall clock
        return sign_document(DataRequest(self.box.public_key, (), (signer_id(
            self.owner.public_key),), terms, "quality of the site", 0), self.signing, T0_MS)

    def consent(self, request: Document, devices: list[TestDevice]) -> Document:
        body = request.body
        assert isinstance(body, DataRequest)
        return sign_document(Consent(request.id, self.box.public_key,
                                     tuple(d.device_id for d in devices), body.terms),
                             self.owner.signing, T0_MS)


def reading(dev: TestDevice, keys: EpochKeys, stream: str, tenths: int, *,
            advance: bool) -> bytes:
    """The device's next record on ``stream``: a sealed °C reading (``advance``: a new
    reading a minute later; otherwise the same reading again, as a derived record is)."""
    if advance:
        dev.mono_ms += MINUTE_MS
        dev.wall_ms += MINUTE_MS
    values = (Measurement(tenths, -1, "Cel"),)
    header = Record(dev.boot, dev.seq, dev.prev, dev.wall_ms, dev.synced, dev.mono_ms,
                    stream, Values(values))
    signed = sign_record(seal_record(dev.device_id, header, keys, values), dev.device_id,
                         dev.key)
    dev.seq += 1
    dev.prev = signed.hash
    dev.signed.append(signed)
    return signed.raw


def make_company(base_url: str, client: DeviceClient, consented: int = 4) -> Company:
    """Enrol the devices (owner-pinned, climate sealed to the owner), log one consent per
    device for the first ``consented`` ones, then twelve readings each, every one also
    made as a derived record for the company where a consent applies."""
    rng = random.Random(16)
    owner = OwnerKey(SigningKey(Secret(rng.randbytes(32))), RecipientKey(Secret(rng.randbytes(32))))
    company = Company(base_url, owner, SigningKey(Secret(b"\x31" * 32)),
                      RecipientKey(Secret(b"\x32" * 32)), [])
    response = httpx.post(f"{base_url}/v1/recipients", headers=ADMIN, json={
        "name": "acme", "signing_key": company.signing.public_key.hex(),
        "sealing_key": company.box.public_key.hex()})
    assert response.status_code == 201, response.text
    first_keys = []
    for i in range(4):
        dev = TestDevice.create(f"dht-{i}", 200 + i)
        dev.wall_ms = T0_MS - MINUTE_MS
        response = httpx.post(f"{base_url}/v1/devices", headers=ADMIN, json={
            "name": dev.name, "public_key": dev.enrolled_key.hex(), "owner": "olga",
            "rate_micro_per_hour": RATE, "owner_key": owner.public_key.hex(),
            "owner_sealing_key": owner.sealing_public_key.hex()})
        assert response.status_code == 201, response.text
        body, keys = new_key_epoch(dev.device_id, 0, {"climate": [owner.sealing_public_key]})
        epoch = dev.next(body, stream=KEYS_STREAM, advance_ms=0).raw
        client.send(dev, [epoch, reading(dev, keys, "climate", 210, advance=False)],
                    batch_id=1)
        client.wait_for(dev.device_id, 1)
        company.devices.append(dev)
        first_keys.append(keys)
    request = company.request()
    submitted(base_url, request)
    for dev in company.devices[:consented]:
        consent = company.consent(request, [dev])
        submitted(base_url, consent)
        company.consents[dev.device_id] = consent
    for i, dev in enumerate(company.devices):
        recipients = {"climate": [owner.sealing_public_key]}
        consents = {}
        consent = company.consents.get(dev.device_id)
        name = ""
        if consent is not None:
            name = derived_stream("climate", consent.id)
            recipients[name] = [company.box.public_key]
            consents[name] = consent.id
        body, keys = new_key_epoch(dev.device_id, dev.seq, recipients, consents=consents)
        batch = [dev.next(body, stream=KEYS_STREAM, advance_ms=0).raw]
        for m in range(12):
            tenths = 210 + OFFSETS[i] + m % 3
            batch.append(reading(dev, keys, "climate", tenths, advance=True))
            if name:
                batch.append(reading(dev, keys, name, tenths, advance=False))
        client.send(dev, batch, batch_id=2)
        client.wait_for(dev.device_id, 2)
        logged = httpx.get(f"{base_url}/v1/devices/{dev.device_id.hex()}/records").json()
        company.derived[dev.device_id] = [r["index"] for r in logged["records"]
                                          if name and r["stream"] == name]
    return company


def validator_argv(company: Company, gateway: RunningGateway, tmp_path: Path) -> list[str]:
    site = tmp_path / "office.toml"
    site.write_text(render(Site("office", "climate", "Cel", "acme", tuple(
        SiteSensor(d.name, d.device_id.hex(), 0.5) for d in company.site))))
    save_signing_key(tmp_path / "acme.signing", company.signing)
    save_recipient_key(tmp_path / "acme.key", company.box)
    return ["once", "--site", str(site), "--gateway", gateway.base_url,
            "--signing-key", str(tmp_path / "acme.signing"),
            "--recipient-key", str(tmp_path / "acme.key"),
            "--window-s", str(WINDOW_S), "--json"]


def quality_documents(base_url: str) -> list[bytes]:
    listed = httpx.get(f"{base_url}/v1/documents", params={"type": "quality"}).json()
    return [bytes.fromhex(d["document"]) for d in listed]


def test_company_with_consents_validates_the_site_and_its_faulty_verdict_is_logged_and_gates(
        gateway: RunningGateway, devices: DeviceClient, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    company = make_company(gateway.base_url, devices)
    assert validator_main(validator_argv(company, gateway, tmp_path)) == 0
    out = json.loads(capsys.readouterr().out)
    biased = company.devices[2].device_id
    assert (out["logged"], out["refused"]) == (4, {})
    assert out["states"][biased.hex()] == "faulty"
    logged = quality_documents(gateway.base_url)
    assert len(logged) == 4
    last = parse_document(logged[-1]).body
    assert isinstance(last, QualityAttestation)
    assert last.stream == "climate"  # the base stream; its leaves are derived records
    verdict = last.of(biased)
    assert verdict.state == "faulty"
    assert set(verdict.leaves) <= set(company.derived[biased])
    store = gateway.service.store
    gating = IncrementalGating((signer_id(company.signing.public_key),))
    gating.advance(store, store.size())
    last_window_end = T0_MS + 12 * MINUTE_MS
    usage = UsageLeaf(store.size(), biased, last_window_end - MINUTE_MS, 1)
    assert gating.judge.withheld(usage)  # the operator trusting acme withholds its pay
    healthy = replace(usage, device=company.devices[0].device_id)
    assert not gating.judge.withheld(healthy)


def test_company_without_consent_for_one_sensor_gets_not_readable_and_nothing_is_logged(
        gateway: RunningGateway, devices: DeviceClient, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    company = make_company(gateway.base_url, devices, consented=2)
    assert company.derived[company.devices[2].device_id] == []
    unconsented = company.devices[2]
    logged = httpx.get(f"{gateway.base_url}/v1/devices/{unconsented.device_id.hex()}"
                       "/records").json()
    base = [r["index"] for r in logged["records"] if r["stream"] == "climate"]
    sensors = [SensorAttestation(d.device_id, "healthy", (), tuple(
        company.derived[d.device_id][:3])) for d in company.site[:2]]
    sensors.append(SensorAttestation(unconsented.device_id, "healthy", (), tuple(base[1:4])))
    body = QualityAttestation("office", "climate", "Cel", T0_MS, WINDOW_S * 1000, None,
                              tuple(sorted(sensors, key=lambda s: s.device_id)))
    size = gateway.service.store.size()
    response = submit(gateway.base_url, sign_attestation(body, company.signing, T0_MS))
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == "not_readable"
    assert rejections(gateway.base_url)["not_readable"] >= 1
    # The validator itself refuses to judge a sensor it cannot read (it would see only a
    # dropout) and submits nothing.
    assert validator_main(validator_argv(company, gateway, tmp_path)) == 2
    assert f"device {unconsented.device_id.hex()}" in capsys.readouterr().err
    assert gateway.service.store.size() == size
    assert quality_documents(gateway.base_url) == []


def test_leaves_of_a_device_outside_the_site_are_refused(
        gateway: RunningGateway, devices: DeviceClient, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    company = make_company(gateway.base_url, devices)
    outsider = company.devices[3]
    sensors = [SensorAttestation(d.device_id, "healthy", (), tuple(
        company.derived[d.device_id][:3])) for d in company.site]
    # the outsider's readable leaves slipped under a site sensor's verdict
    sensors[0] = replace(sensors[0], leaves=tuple(company.derived[outsider.device_id][:3]))
    body = QualityAttestation("office", "climate", "Cel", T0_MS, WINDOW_S * 1000, None,
                              tuple(sorted(sensors, key=lambda s: s.device_id)))
    size = gateway.service.store.size()
    response = submit(gateway.base_url, sign_attestation(body, company.signing, T0_MS))
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == "unknown_leaf"
    # the validator itself reads only the site file's devices, though it could read more
    assert validator_main(validator_argv(company, gateway, tmp_path)) == 0
    out = json.loads(capsys.readouterr().out)
    assert outsider.device_id.hex() not in out["states"]
    assert gateway.service.store.size() == size + out["logged"]


def test_after_a_revocation_the_validator_stops_rather_than_judge_a_dropout(
        gateway: RunningGateway, devices: DeviceClient, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    company = make_company(gateway.base_url, devices)
    argv = [*validator_argv(company, gateway, tmp_path), "--state", str(tmp_path / "s")]
    assert validator_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["logged"] == 4
    revoked = company.devices[2]
    submitted(gateway.base_url, sign_document(
        Revocation(company.consents[revoked.device_id].id, 1, "owner"),
        company.owner.signing, T0_MS))
    # the device applies it: a new key epoch without the derived stream, base readings only
    body, keys = new_key_epoch(revoked.device_id, revoked.seq,
                               {"climate": [company.owner.sealing_public_key]})
    batch = [revoked.next(body, stream=KEYS_STREAM, advance_ms=0).raw]
    batch += [reading(revoked, keys, "climate", 230, advance=True) for _ in range(6)]
    devices.send(revoked, batch, batch_id=3)
    devices.wait_for(revoked.device_id, 3)
    size = gateway.service.store.size()
    assert validator_main(argv) == 2
    assert f"device {revoked.device_id.hex()}" in capsys.readouterr().err
    assert gateway.service.store.size() == size
