"""The HTTP API over real loopback HTTP: admin auth, proofs, records, OpenAPI, bad input."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from pathlib import Path

import httpx
import pytest

from gateway.openapi import openapi_text
from protocol import merkle
from protocol.checkpoint import Checkpoint, checkpoint_hash
from protocol.note import NoteVerifier
from protocol.record import GENESIS_PREV
from tests.gateway.conftest import start_gateway
from tests.gateway.gwkit import ADMIN_TOKEN, TestDevice, register, write_gateway_files

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
    assert bytes.fromhex(leaf["record"]) == dev.signed[3].raw
    assert leaf["seq"] == 3
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
    assert health.status_code == 200
    assert health.json()["mqtt_connected"] is True


@pytest.mark.parametrize("path", [
    "/v1/leaves/9223372036854775808",
    "/v1/leaves/99999999999999999999999999999999",
    "/v1/checkpoints?after=9223372036854775808",
    "/v1/checkpoints?limit=9223372036854775808",
    f"/v1/devices/{'0' * 32}/records?after_seq=9223372036854775808",
    "/v1/proofs/inclusion?index=9223372036854775808&tree_size=1",
    "/v1/proofs/inclusion?index=0&tree_size=9223372036854775808",
    "/v1/proofs/consistency?old_size=1&new_size=9223372036854775808",
    "/v1/anchors?size=9223372036854775808",
    "/v1/anchors/list?after_size=9223372036854775808",
    "/v1/anchors/list?after_size=-1",
    "/v1/anchors/list?limit=0",
    "/v1/anchors/list?limit=1001",
    "/v1/leaves/-1",
    "/v1/checkpoints?after=abc",
    # a NUL in a name cursor: PostgreSQL text refuses it (a 500 there before)
    "/v1/owners?after=%00",
    "/v1/dashboard/devices?after=a%00b",
])
def test_huge_or_bad_integers_get_400_with_one_line_not_a_500(gateway, path) -> None:
    response = httpx.get(f"{gateway.base_url}{path}")
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert "\n" not in detail
    assert "parameter" in detail


def http_rejections(base_url: str) -> dict[str, float]:
    text = httpx.get(f"{base_url}/metrics").text
    return {m[1]: float(m[2]) for m in re.finditer(
        r'^edgeproof_gateway_http_rejections_total\{reason="([a-z_]+)"\} (\S+)$', text, re.M)}


def test_requests_refused_by_validation_are_counted_with_their_reason(gateway) -> None:
    # Before: a bad parameter or body was answered, but no counter said so.
    url = gateway.base_url
    before = http_rejections(url)
    assert httpx.get(f"{url}/v1/leaves", params={"start": -1}).status_code == 400
    assert httpx.get(f"{url}/v1/leaves/abc").status_code == 400
    assert httpx.post(f"{url}/v1/wallets", json={"document": "zz"}).status_code == 422
    after = http_rejections(url)
    assert after["bad_parameter"] - before["bad_parameter"] == 2
    assert after["bad_body"] - before["bad_body"] == 1


@pytest.mark.parametrize("path", ["/v1/stats", "/v1/checkpoints", "/v1/documents",
                                  "/v1/leaves/0", "/healthz", "/v1/devices", "/metrics"])
def test_no_answer_of_the_api_is_sniffed_into_something_else(gateway, path) -> None:
    # Only the dashboard's page and JSON said nosniff; the log's and documents' JSON, which
    # hold text that devices and strangers chose, and the refusals did not.
    answer = httpx.get(f"{gateway.base_url}{path}")
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_largest_integers_in_range_get_an_answer_not_a_500(gateway) -> None:
    top = 2**63 - 1
    url = gateway.base_url
    assert httpx.get(f"{url}/v1/leaves/{top}").status_code == 404
    # start + limit past 2^63 - 1 overflowed SQLite's INTEGER: a 500 before.
    assert httpx.get(f"{url}/v1/leaves", params={"start": top}).json() == []
    assert httpx.get(f"{url}/v1/leaves", params={"start": top - 10, "limit": 1000}).json() == []
    assert httpx.get(f"{url}/v1/checkpoints", params={"after": top}).json() == []
    records = httpx.get(f"{url}/v1/devices/{'0' * 32}/records", params={"after_seq": top})
    assert records.status_code == 200
    assert records.json()["records"] == []
    assert httpx.get(f"{url}/v1/proofs/inclusion",
                     params={"index": 0, "tree_size": top}).status_code == 400
    local = httpx.get(f"{url}/v1/anchors/list", params={"after_size": top, "limit": 1000})
    assert local.status_code == 404
    assert "local" in local.json()["detail"]


def test_data_files_are_private_whatever_the_umask(broker, tmp_path) -> None:
    old = os.umask(0o022)
    try:
        running = start_gateway(write_gateway_files(tmp_path / "gw", broker.port))
    finally:
        os.umask(old)
    try:
        dev = TestDevice.create("dev-modes", 44)
        register(running.base_url, dev)  # a write: the WAL and its index exist now
        data = running.files.data_dir
        files = sorted(p.name for p in data.iterdir())
        assert {"gateway.sqlite", "gateway.sqlite-wal", "gateway.sqlite-shm"} <= set(files)
        for name in files:
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
    finally:
        running.stop()


def test_enrolling_a_key_another_device_rotated_to_names_that_device(gateway, devices) -> None:
    holder = TestDevice.create("dev-holder", 45)
    register(gateway.base_url, holder)
    claimed = TestDevice.create("dev-claimed", 46)
    devices.send(holder, [holder.next().raw, holder.rotate(claimed.key).raw], 1)
    receipt = devices.wait_for(holder.device_id, 1)
    assert [o.status.name for o in receipt.outcomes] == ["ACCEPTED", "ACCEPTED"]
    response = httpx.post(f"{gateway.base_url}/v1/devices", json={
        "name": claimed.name, "public_key": claimed.enrolled_key.hex(), "owner": "o",
        "rate_micro_per_hour": 1}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert f"'dev-holder' ({holder.device_id.hex()}, rotated to it at seq 1)" in detail


def test_interactive_docs_pages_are_not_served(gateway) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(f"{gateway.base_url}{path}").status_code == 404
    assert httpx.get(f"{gateway.base_url}/openapi.json").status_code == 200
