"""The HTTP API over real loopback HTTP: admin auth, proofs, records, OpenAPI."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from gateway.openapi import openapi_text
from protocol import merkle
from protocol.checkpoint import Checkpoint, checkpoint_hash
from protocol.note import NoteVerifier
from protocol.record import GENESIS_PREV
from tests.gateway.gwkit import ADMIN_TOKEN, TestDevice, register

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-token-wrong-token"},
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    {"Authorization": "Bearer"},
])
def test_admin_endpoints_refuse_missing_or_wrong_token(gateway, headers) -> None:
    dev = TestDevice.create("dev-auth", 40)
    url = gateway.base_url
    body = {"name": "x", "public_key": dev.enrolled_key.hex(), "owner": "o",
            "rate_micro_per_hour": 1}
    assert httpx.post(f"{url}/v1/devices", json=body, headers=headers).status_code == 401
    assert httpx.get(f"{url}/v1/devices", headers=headers).status_code == 401
    revoke = f"{url}/v1/devices/{dev.device_id.hex()}/revoke"
    assert httpx.post(revoke, headers=headers).status_code == 401


def test_registration_conflicts_and_bad_input(gateway) -> None:
    dev = TestDevice.create("dev-dup", 41)
    register(gateway.base_url, dev)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    again = {"name": "other", "public_key": dev.enrolled_key.hex(), "owner": "o",
             "rate_micro_per_hour": 1}
    assert httpx.post(f"{gateway.base_url}/v1/devices", json=again,
                      headers=admin).status_code == 409
    bad = dict(again, public_key="zz", name="n2")
    assert httpx.post(f"{gateway.base_url}/v1/devices", json=bad, headers=admin).status_code == 422
    unknown = f"{gateway.base_url}/v1/devices/{'0' * 32}/revoke"
    assert httpx.post(unknown, headers=admin).status_code == 404


def test_every_inclusion_and_consistency_proof_verifies(gateway, devices) -> None:
    dev = TestDevice.create("dev-proofs", 42)
    register(gateway.base_url, dev)
    for batch_id in range(1, 5):
        devices.send(dev, dev.records(5 + batch_id), batch_id)
        devices.wait_for(dev.device_id, batch_id)
    url = gateway.base_url
    http = httpx.Client()  # one connection: a new client per call costs ~60 ms
    size = http.get(f"{url}/v1/stats").json()["log_size"]
    assert size == 6 + 7 + 8 + 9
    leaves = [merkle.leaf_hash(s.raw) for s in dev.signed]
    for tree_size in range(1, size + 1):
        root = merkle.root(leaves[:tree_size])
        for index in range(tree_size):
            body = http.get(f"{url}/v1/proofs/inclusion",
                            params={"index": index, "tree_size": tree_size}).json()
            assert bytes.fromhex(body["leaf_hash"]) == leaves[index]
            merkle.verify_inclusion(leaves[index], index, tree_size,
                                    [bytes.fromhex(h) for h in body["proof"]], root)
        if tree_size % 5 == 0:
            for new_size in range(tree_size, size + 1):
                body = http.get(f"{url}/v1/proofs/consistency",
                                params={"old_size": tree_size, "new_size": new_size}).json()
                merkle.verify_consistency(tree_size, new_size, root,
                                          merkle.root(leaves[:new_size]),
                                          [bytes.fromhex(h) for h in body["proof"]])
    http.close()
    leaf = httpx.get(f"{url}/v1/leaves/3").json()
    assert bytes.fromhex(leaf["record"]) == dev.signed[3].raw and leaf["seq"] == 3
    assert httpx.get(f"{url}/v1/leaves/{size}").status_code == 404
    assert httpx.get(f"{url}/v1/proofs/inclusion",
                     params={"index": 0, "tree_size": size + 1}).status_code == 400
    page = httpx.get(f"{url}/v1/devices/{dev.device_id.hex()}/records",
                     params={"after_seq": 10, "limit": 5}).json()["records"]
    assert [r["seq"] for r in page] == [11, 12, 13, 14, 15]


def test_checkpoints_form_a_signed_consistent_chain(gateway, devices) -> None:
    dev = TestDevice.create("dev-chain-cp", 43)
    register(gateway.base_url, dev)
    for batch_id in range(1, 4):
        devices.send(dev, dev.records(3), batch_id)
        devices.wait_for(dev.device_id, batch_id)
    verifier = NoteVerifier.from_text(gateway.verifier)
    listed = httpx.get(f"{gateway.base_url}/v1/checkpoints").json()
    assert listed[0]["size"] == 0
    prev = GENESIS_PREV
    for item in listed:
        cp = Checkpoint.from_note(item["note"], verifier)
        assert f"prev {base64.b64encode(prev).decode()}" in cp.extensions
        prev = checkpoint_hash(item["note"])
    sizes = [c["size"] for c in listed]
    assert sizes == sorted(set(sizes))


def test_openapi_in_docs_matches_the_served_description(gateway) -> None:
    committed = (REPO / "docs" / "openapi.json").read_text()
    assert committed == openapi_text(), "run: edgeproof-gateway openapi --out docs/openapi.json"
    served = httpx.get(f"{gateway.base_url}/openapi.json").json()
    assert served == json.loads(committed)
    paths = set(served["paths"])
    table = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    for path in paths:
        assert f" {path.split('{')[0]}" in table, f"{path} missing from ARCHITECTURE.md"


def test_metrics_and_health_are_served(gateway) -> None:
    text = httpx.get(f"{gateway.base_url}/metrics").text
    for name in ("edgeproof_gateway_records_accepted_total", "edgeproof_gateway_log_size",
                 "edgeproof_gateway_ingest_lag_seconds_bucket",
                 'edgeproof_gateway_rejections_total{reason="equivocation"} 0.0'):
        assert name in text
    health = httpx.get(f"{gateway.base_url}/healthz")
    assert health.status_code == 200 and health.json()["mqtt_connected"] is True
