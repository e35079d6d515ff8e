"""Device add / enroll / list / revoke / rotate through the CLI against the real gateway."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import requests

from firmware_sim.broker import free_port
from protocol.errors import ConfigError
from protocol.keys import OwnerKey, OwnerPublic, SigningKey, device_id_for, load_device_key
from provisioning import broker as broker_mod
from provisioning.devices_store import (
    AGENT_CONFIG,
    BROKER_PASSWORD,
    DEVICE_KEY,
    NEXT_KEY,
    RECORD,
    bundle_dir,
    load_record,
)
from provisioning.fleet import ADMIN_TOKEN, GATEWAY_CONFIG, changing, load_fleet, read_admin_token
from provisioning.gateway_api import GatewayAPI
from tests.provisioning.provision_live import (
    LiveFleet,
    init_fleet,
    mode,
    provision,
    set_fleet_option,
)

Capture = pytest.CaptureFixture[str]


def one_error_line(capsys: Capture) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("edgeproof-provision: error: ")
    return err


def gateway_devices(live: LiveFleet) -> dict[str, str]:
    api = GatewayAPI(live.gateway.url, read_admin_token(live.config))
    return {d.name: d.status for d in api.list_devices()}


def fleet_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "devices").rglob("*"))


def test_add_writes_a_complete_bundle_with_private_modes(live_fleet: LiveFleet) -> None:
    assert live_fleet.run("device", "add", "pi-kitchen") == 0
    bundle = bundle_dir(live_fleet.config, "pi-kitchen")
    assert mode(bundle) == 0o700
    for rel in (DEVICE_KEY, BROKER_PASSWORD, RECORD):
        assert mode(bundle / rel) == 0o600, rel
    key = load_device_key(bundle / DEVICE_KEY)
    record = load_record(live_fleet.config, "pi-kitchen")
    assert record.device_id == device_id_for(key.public_key).hex() == record.broker_user
    agent = tomllib.loads((bundle / AGENT_CONFIG).read_text())
    assert agent["mqtt"] == {"broker": live_fleet.config.broker_url,
                             "username": record.device_id,
                             "password_file": "/etc/edgeproof/broker.password"}
    assert agent["gateway"]["key"] == live_fleet.config.gateway_verifier_key
    assert agent["agent"]["state_dir"] == "/var/lib/edgeproof"
    assert agent["usage"]["rate_micro_per_hour"] == record.rate_micro_per_hour == 1_000_000
    assert gateway_devices(live_fleet)["pi-kitchen"] == "active"
    assert f"user {record.device_id}" in (live_fleet.broker_dir / "acl").read_text()


def test_add_count_provisions_numbered_devices(live_fleet: LiveFleet, capsys: Capture) -> None:
    capsys.readouterr()
    assert live_fleet.run("device", "add", "batch", "--count", "3", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in out] == ["batch-001", "batch-002", "batch-003"]
    registered = gateway_devices(live_fleet)
    assert all(registered[d["name"]] == "active" for d in out)
    assert len({d["device_id"] for d in out}) == 3


def test_enroll_registers_a_device_made_key_and_ships_no_secret_key(
        live_fleet: LiveFleet) -> None:
    on_device = SigningKey.generate()
    assert live_fleet.run("device", "enroll", "pi-own-key", "--public-key",
                          on_device.public_key.hex()) == 0
    bundle = bundle_dir(live_fleet.config, "pi-own-key")
    assert not (bundle / DEVICE_KEY).exists()
    assert (bundle / BROKER_PASSWORD).exists()
    record = load_record(live_fleet.config, "pi-own-key")
    assert record.device_id == device_id_for(on_device.public_key).hex()
    assert record.key_origin == "device"
    assert gateway_devices(live_fleet)["pi-own-key"] == "active"


def test_enrolling_a_key_that_is_already_registered_is_refused(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    key = SigningKey.generate().public_key.hex()
    assert live_fleet.run("device", "enroll", "first-holder", "--public-key", key) == 0
    capsys.readouterr()
    assert live_fleet.run("device", "enroll", "second-holder", "--public-key", key) == 2
    assert "already registered" in one_error_line(capsys)
    assert not bundle_dir(live_fleet.config, "second-holder").exists()


def test_duplicate_name_in_the_fleet_gives_one_line_and_changes_nothing(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    assert live_fleet.run("device", "add", "twin") == 0
    before = (bundle_dir(live_fleet.config, "twin") / RECORD).read_bytes()
    capsys.readouterr()
    assert live_fleet.run("device", "add", "twin") == 2
    assert "already exists" in one_error_line(capsys)
    assert (bundle_dir(live_fleet.config, "twin") / RECORD).read_bytes() == before


def test_name_taken_at_the_gateway_gives_one_line_and_writes_nothing(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    api = GatewayAPI(live_fleet.gateway.url, read_admin_token(live_fleet.config))
    api.register(name="elsewhere", public_key=SigningKey.generate().public_key, owner="bob",
                 rate_micro_per_hour=0)
    before = fleet_files(live_fleet.root)
    capsys.readouterr()
    assert live_fleet.run("device", "add", "elsewhere") == 2
    assert "already registered at the gateway" in one_error_line(capsys)
    assert fleet_files(live_fleet.root) == before


def test_count_with_one_taken_name_provisions_none_of_them(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    assert live_fleet.run("device", "add", "row-002") == 0
    capsys.readouterr()
    assert live_fleet.run("device", "add", "row", "--count", "3") == 2
    assert "row-002" in one_error_line(capsys)
    assert not bundle_dir(live_fleet.config, "row-001").exists()
    assert "row-001" not in gateway_devices(live_fleet)


def test_gateway_refusing_the_registration_leaves_no_bundle(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    before = fleet_files(live_fleet.root)
    capsys.readouterr()
    assert live_fleet.run("device", "add", "greedy", "--owner", "o" * 500) == 1
    assert "HTTP 422" in one_error_line(capsys)
    assert fleet_files(live_fleet.root) == before
    assert "greedy" not in gateway_devices(live_fleet)


def test_wrong_admin_token_gives_one_line(live_fleet: LiveFleet, capsys: Capture) -> None:
    token_file = live_fleet.root / ADMIN_TOKEN
    good = token_file.read_text()
    token_file.write_text("not-the-token-at-all-not-the-token\n")
    try:
        capsys.readouterr()
        assert live_fleet.run("device", "add", "intruder") == 1
        assert "admin token" in one_error_line(capsys)
    finally:
        token_file.write_text(good)
    assert not bundle_dir(live_fleet.config, "intruder").exists()


def test_recipients_chosen_at_add_are_the_streams_recipients(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    assert live_fleet.run("recipient", "add", "insurer") == 0
    assert live_fleet.run("device", "add", "shared", "--recipient", "insurer") == 0
    public = (live_fleet.root / "recipients/insurer.pub").read_text().strip()
    agent = tomllib.loads((bundle_dir(live_fleet.config, "shared") / AGENT_CONFIG).read_text())
    assert agent["recipients"] == {"insurer": public}
    assert agent["sensors"]
    assert all(s["recipients"] == ["insurer"] for s in agent["sensors"])
    capsys.readouterr()
    assert live_fleet.run("device", "add", "lonely", "--recipient", "nobody") == 2
    assert "no recipient 'nobody'" in one_error_line(capsys)
    assert "lonely" not in gateway_devices(live_fleet)


def test_list_merges_fleet_records_and_gateway_status(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    assert live_fleet.run("device", "add", "listed") == 0
    api = GatewayAPI(live_fleet.gateway.url, read_admin_token(live_fleet.config))
    api.register(name="foreign", public_key=SigningKey.generate().public_key, owner="bob",
                 rate_micro_per_hour=0)
    capsys.readouterr()
    assert live_fleet.run("device", "list", "--json") == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert (rows["listed"]["fleet_status"], rows["listed"]["gateway_status"]) == (
        "active", "active")
    assert rows["foreign"]["fleet_status"] == "not in fleet"
    assert live_fleet.run("device", "list") == 0
    assert "listed" in capsys.readouterr().out


def test_revoke_removes_the_broker_credential_and_revokes_at_the_gateway(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    assert live_fleet.run("device", "add", "retired") == 0
    user = load_record(live_fleet.config, "retired").broker_user
    capsys.readouterr()
    assert live_fleet.run("device", "revoke", "retired", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gateway_revoked"]
    assert out["broker_reloaded"]
    assert gateway_devices(live_fleet)["retired"] == "revoked"
    assert f"{user}:" not in (live_fleet.broker_dir / "passwd").read_text()
    assert user not in (live_fleet.broker_dir / "acl").read_text()


def test_revoke_with_the_gateway_down_still_cuts_the_broker_and_says_so(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    assert live_fleet.run("device", "add", "lost") == 0
    user = load_record(live_fleet.config, "lost").broker_user
    fleet_toml = live_fleet.root / "fleet.toml"
    good = fleet_toml.read_text()
    fleet_toml.write_text(good.replace(live_fleet.gateway.url,
                                       f"http://127.0.0.1:{free_port()}"))
    try:
        capsys.readouterr()
        assert live_fleet.run("device", "revoke", "lost") == 1
        assert "NOT revoked at the gateway" in one_error_line(capsys)
        assert f"{user}:" not in (live_fleet.broker_dir / "passwd").read_text()
        assert gateway_devices(live_fleet)["lost"] == "active"
    finally:
        fleet_toml.write_text(good)
    assert live_fleet.run("device", "revoke", "lost") == 0
    assert gateway_devices(live_fleet)["lost"] == "revoked"


def test_rotate_writes_the_next_key_for_a_factory_device_once(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    assert live_fleet.run("device", "add", "rotor") == 0
    assert live_fleet.run("device", "rotate", "rotor") == 0
    bundle = bundle_dir(live_fleet.config, "rotor")
    next_key = load_device_key(bundle / NEXT_KEY)
    assert mode(bundle / NEXT_KEY) == 0o600
    assert next_key.public_key != load_device_key(bundle / DEVICE_KEY).public_key
    assert load_record(live_fleet.config, "rotor").next_public_key == next_key.public_key.hex()
    capsys.readouterr()
    assert live_fleet.run("device", "rotate", "rotor") == 2
    assert "pending rotation" in one_error_line(capsys)


def test_rotate_of_an_enrolled_device_prints_steps_and_writes_no_key(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    key = SigningKey.generate().public_key.hex()
    assert live_fleet.run("device", "enroll", "self-made", "--public-key", key) == 0
    capsys.readouterr()
    assert live_fleet.run("device", "rotate", "self-made", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["next_key_file"] is None
    assert "on the device" in out["instructions"]
    assert not (bundle_dir(live_fleet.config, "self-made") / NEXT_KEY).exists()


def test_unreachable_gateway_gives_one_line_and_leaves_nothing(
        tmp_path: Path, capsys: Capture) -> None:
    root = tmp_path / "fleet"
    init_fleet(root, free_port(), free_port())  # nothing listens on the gateway port
    before = broker_mod.render_files(load_fleet(root))
    capsys.readouterr()
    assert provision("device", "add", "orphan", "--count", "2", "--fleet", str(root)) == 1
    assert "gateway unreachable" in one_error_line(capsys)
    assert list((root / "devices").iterdir()) == []
    assert broker_mod.render_files(load_fleet(root)) == before
    assert provision("device", "enroll", "orphan", "--fleet", str(root), "--public-key",
                     SigningKey.generate().public_key.hex()) == 1
    one_error_line(capsys)
    assert list((root / "devices").iterdir()) == []


def test_bad_public_key_is_one_line(tmp_path: Path, capsys: Capture) -> None:
    root = tmp_path / "fleet"
    init_fleet(root, free_port(), free_port())
    assert provision("device", "enroll", "x", "--fleet", str(root), "--public-key", "abc") == 2
    assert "64 hex digits" in one_error_line(capsys)


def test_gateway_config_from_init_is_what_the_live_gateway_runs(live_fleet: LiveFleet) -> None:
    # The live fixture started the gateway with exactly this file; its key is the fleet's.
    assert (live_fleet.root / GATEWAY_CONFIG).exists()
    served = requests.get(f"{live_fleet.gateway.url}/v1/verifier-key", timeout=5).text.strip()
    assert live_fleet.config.gateway_verifier_key in served


def test_list_without_the_gateway_works_with_local(tmp_path: Path, capsys: Capture) -> None:
    root = tmp_path / "fleet"
    init_fleet(root, free_port(), free_port())
    assert provision("device", "list", "--fleet", str(root)) == 1
    one_error_line(capsys)
    assert provision("device", "list", "--local", "--json", "--fleet", str(root)) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_fleet_option_edit_helper_keeps_the_file_valid(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    init_fleet(root, 1883, 8080)
    set_fleet_option(root, "reload_command", "systemctl reload mosquitto")
    assert load_fleet(root).broker_control.reload_command == "systemctl reload mosquitto"


def test_bundle_agent_config_is_accepted_by_the_agent(live_fleet: LiveFleet) -> None:
    agent_config = pytest.importorskip("agent.config", reason="the agent is not built yet")
    assert live_fleet.run("recipient", "add", "auditor") == 0
    assert live_fleet.run("device", "add", "loadable", "--recipient", "auditor") == 0
    record = load_record(live_fleet.config, "loadable")
    cfg = agent_config.load_config(
        bundle_dir(live_fleet.config, "loadable") / AGENT_CONFIG, {})
    assert cfg.mqtt.username == record.device_id
    assert cfg.mqtt.port == live_fleet.broker.port
    assert cfg.mqtt.password_file == Path("/etc/edgeproof/broker.password")
    assert cfg.state_dir == Path("/var/lib/edgeproof")
    assert cfg.key_file == Path("/var/lib/edgeproof/device.key")
    assert cfg.usage is not None
    assert cfg.usage.rate_micro_per_hour == 1_000_000
    auditor = (live_fleet.root / "recipients/auditor.pub").read_text().strip()
    assert set(cfg.stream_recipients().values()) == {(bytes.fromhex(auditor),)}


def test_a_bundle_half_built_by_a_killed_run_is_invisible_and_cleaned_up(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    stale = live_fleet.config.devices_dir / ".crashed.tmp-999999"
    (stale / "etc/edgeproof").mkdir(parents=True)
    (stale / "etc/edgeproof/agent.toml").write_text("half")
    capsys.readouterr()
    assert live_fleet.run("device", "list", "--local", "--json") == 0
    assert "crashed" not in capsys.readouterr().out
    assert live_fleet.run("device", "add", "crashed") == 0
    assert not stale.exists()
    assert (bundle_dir(live_fleet.config, "crashed") / RECORD).exists()


def test_a_second_command_changing_the_fleet_at_once_is_refused(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    with changing(live_fleet.config):
        capsys.readouterr()
        assert live_fleet.run("device", "add", "racer") == 2
        assert "another edgeproof-provision command" in one_error_line(capsys)
    assert not bundle_dir(live_fleet.config, "racer").exists()
    assert live_fleet.run("device", "add", "racer") == 0


def test_rotate_again_once_the_gateway_has_taken_the_pending_key(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    from provisioning import devices  # noqa: PLC0415

    assert live_fleet.run("device", "add", "rotor2") == 0
    assert live_fleet.run("device", "rotate", "rotor2") == 0
    bundle = bundle_dir(live_fleet.config, "rotor2")
    pending = load_device_key(bundle / NEXT_KEY).public_key.hex()
    # The gateway still names the old key: the rotation is pending, no second one.
    with pytest.raises(ConfigError, match="pending rotation"):
        devices.rotate(live_fleet.config, "rotor2", gateway_current_key="00" * 32)
    # Once the gateway's current key is the pending one, the bundle moves on to it and a
    # new next key is made.
    outcome = devices.rotate(live_fleet.config, "rotor2", gateway_current_key=pending)
    assert outcome.next_key_file == bundle / NEXT_KEY
    assert load_device_key(bundle / DEVICE_KEY).public_key.hex() == pending
    assert load_record(live_fleet.config, "rotor2").next_public_key not in ("", pending)


def test_owner_key_at_enrolment_is_pinned_at_the_gateway_and_in_the_bundle(
        live_fleet: LiveFleet, tmp_path: Path, capsys: Capture) -> None:
    owner = OwnerPublic.of(OwnerKey.generate())
    key_file = tmp_path / "owner.pub"
    key_file.write_text(owner.text() + "\n")
    assert live_fleet.run("device", "add", "owned", "--owner-key", str(key_file)) == 0
    agent = tomllib.loads((bundle_dir(live_fleet.config, "owned") / AGENT_CONFIG).read_text())
    assert agent["owner"] == {"public_key": owner.public_key.hex(),
                              "sealing_key": owner.sealing_key.hex()}
    registered = requests.get(f"{live_fleet.gateway.url}/v1/owners/"
                              f"{owner.public_key.hex()}/devices", timeout=10).json()
    assert [d["name"] for d in registered] == ["owned"]
    api = GatewayAPI(live_fleet.gateway.url, read_admin_token(live_fleet.config))
    by_name = {d.name: d for d in api.list_devices()}
    assert by_name["owned"].owner == owner.owner_id.hex()  # the owner is its key's id now
    capsys.readouterr()
    assert live_fleet.run("device", "add", "unowned", "--owner-key", "edgeproof-owner 12") == 2
    assert "edgeproof-owner show" in one_error_line(capsys)


def test_recipient_register_lets_the_gateway_log_its_requests(
        live_fleet: LiveFleet, capsys: Capture) -> None:
    assert live_fleet.run("recipient", "add", "buyer") == 0
    signing = SigningKey.generate().public_key.hex()
    assert live_fleet.run("recipient", "register", "buyer", "--signing-key", signing) == 0
    listed = requests.get(f"{live_fleet.gateway.url}/v1/recipients/list", timeout=10).json()
    public = (live_fleet.root / "recipients/buyer.pub").read_text().strip()
    assert [(r["name"], r["signing_key"], r["sealing_key"]) for r in listed] == [
        ("buyer", signing, public)]
    capsys.readouterr()
    assert live_fleet.run("recipient", "register", "buyer", "--signing-key", signing) == 1
    assert "409" in one_error_line(capsys)
