"""Signed documents at a real gateway on the real broker: logged as leaves, delivered to
devices, and every forgery or bad reference refused with a reason, counted, changing nothing."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from firmware_sim.broker import MosquittoBroker
from protocol import cbor, cose, merkle
from protocol.delivery import PolicySync, sync_topic
from protocol.documents import verify_document
from protocol.errors import VerificationError
from protocol.keys import SigningKey, signer_id
from tests.gateway.conftest import RunningGateway
from tests.gateway.contractkit import (
    Parties,
    PolicyListener,
    rejections,
    submit,
    submitted,
)
from tests.gateway.gwkit import DeviceClient


@pytest.fixture
def policy(broker: MosquittoBroker, gateway: RunningGateway) -> Iterator[PolicyListener]:
    listener = PolicyListener(broker.port)
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture
def parties(gateway: RunningGateway, devices: DeviceClient) -> Parties:
    return Parties.enrol(gateway.base_url, devices)


def test_consent_is_logged_as_a_leaf_and_pushed_to_the_online_device(
        gateway: RunningGateway, parties: Parties, policy: PolicyListener) -> None:
    request = parties.request()
    request_index = submitted(gateway.base_url, request)
    consent = parties.consent(request)
    index = submitted(gateway.base_url, consent)
    assert index == request_index + 1
    delivery = policy.wait(parties.device.device_id, complete=False)
    assert delivery.documents == ((index, consent.raw),)
    # The device accepts it under the owner key it pinned.
    verify_document(delivery.documents[0][1], expected_signer=parties.owner.public_key)
    # Same tree as the records: the leaf hashes the exact signed bytes.
    leaf = httpx.get(f"{gateway.base_url}/v1/leaves/{index}").json()
    assert bytes.fromhex(leaf["record"]) == consent.raw
    size = gateway.service.store.size()
    proof = merkle.inclusion_proof_from_nodes(gateway.service.store, index, size)
    merkle.verify_inclusion(merkle.leaf_hash(consent.raw), index, size, proof,
                            gateway.service.store.root(size))
    listed = httpx.get(f"{gateway.base_url}/v1/documents", params={"type": "consent"}).json()
    assert [d["document"] for d in listed] == [consent.raw.hex()]


def test_consent_signed_by_the_gateway_the_operator_or_another_owner_is_refused(
        gateway: RunningGateway, parties: Parties) -> None:
    request = parties.request()
    submitted(gateway.base_url, request)
    size = gateway.service.store.size()
    forgers = {"gateway": gateway.service.key.signing_key,
               "operator": SigningKey.generate(), "another owner": SigningKey.generate()}
    for who, key in forgers.items():
        forged = parties.consent(request, key)
        response = submit(gateway.base_url, forged)
        assert response.status_code == 400, who
        assert response.json()["reason"] == "not_owner", who
        with pytest.raises(VerificationError):  # and the device would refuse it too
            verify_document(forged.raw, expected_signer=parties.owner.public_key)
    assert rejections(gateway.base_url)["not_owner"] == 3
    assert gateway.service.store.size() == size


def test_bad_references_are_refused_with_their_reason_and_change_nothing(
        gateway: RunningGateway, parties: Parties) -> None:
    never_logged = parties.request(hours=12)
    request = parties.request()
    submitted(gateway.base_url, request)
    consent = parties.consent(request)
    cases = {
        "unknown_request": parties.consent(never_logged),
        "unknown_stream": parties.request((("presence", ("on",)),)),
        "wider_than_request": parties.consent(request, fields=("Cel", "lux")),
        "unknown_consent": parties.revocation(consent),  # the consent was never logged
    }
    size = gateway.service.store.size()
    for reason, doc in cases.items():
        response = submit(gateway.base_url, doc)
        assert (response.status_code, response.json()["reason"]) == (400, reason)
    assert gateway.service.store.size() == size
    counted = rejections(gateway.base_url)
    assert all(counted[reason] == 1 for reason in cases)


def test_replayed_and_reordered_revocations_are_refused(
        gateway: RunningGateway, parties: Parties) -> None:
    request = parties.request()
    submitted(gateway.base_url, request)
    first, second = parties.consent(request), parties.consent(request, fields=("%RH",))
    submitted(gateway.base_url, first)
    submitted(gateway.base_url, second)
    older, newer = parties.revocation(first, 1), parties.revocation(second, 2)
    submitted(gateway.base_url, newer)
    size = gateway.service.store.size()
    response = submit(gateway.base_url, older)  # signed earlier, arrives later
    assert response.json()["reason"] == "stale_counter"
    replay = submit(gateway.base_url, newer)  # the same bytes again: already logged
    assert (replay.status_code, replay.json()["duplicate"]) == (200, True)
    assert gateway.service.store.size() == size


def test_requests_from_unregistered_recipients_and_oversized_or_nested_documents_are_refused(
        gateway: RunningGateway, parties: Parties) -> None:
    stranger = Parties(gateway.base_url, parties.owner, parties.device, SigningKey.generate(),
                       parties.buyer_sealing)
    assert submit(gateway.base_url, stranger.request()).json()["reason"] == "unknown_signer"
    assert submit(gateway.base_url, b"\xd2" * 9000).json()["reason"] == "too_large"
    assert submit(gateway.base_url, b"\xd2" * 100_000).status_code == 413  # never read whole
    deep: cbor.Value = "x"
    for _ in range(20):
        deep = [deep]
    key = parties.buyer_signing
    payload = cbor.encode({1: 1, 2: "request", 3: key.public_key, 4: 0, 5: deep})
    nested = cose.sign1(payload, signer_id(key.public_key), key)
    assert submit(gateway.base_url, nested).json()["reason"] == "malformed"
    flipped = bytearray(parties.request().raw)
    flipped[-1] ^= 1
    assert submit(gateway.base_url, bytes(flipped)).json()["reason"] == "bad_signature"
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    assert 'edgeproof_gateway_documents_rejected_total{reason="too_large"} 1.0' in metrics


def test_device_sync_on_connect_gets_its_consents_and_revocations_complete(
        gateway: RunningGateway, parties: Parties, policy: PolicyListener) -> None:
    request = parties.request()
    submitted(gateway.base_url, request)
    consent = parties.consent(request)
    consent_index = submitted(gateway.base_url, consent)
    revocation_index = submitted(gateway.base_url, parties.revocation(consent))
    device_id = parties.device.device_id
    policy.publish(sync_topic(device_id), PolicySync(0).to_cbor())
    answer = policy.wait(device_id, complete=True)
    assert [i for i, _ in answer.documents] == [consent_index, revocation_index]
    assert answer.next_index == gateway.service.store.size()
