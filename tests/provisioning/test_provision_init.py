"""``edgeproof-provision init``, recipients and broker-config: files, modes, refusals."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config import load_config, parse_config
from protocol.errors import ConfigError
from protocol.keys import load_recipient_key
from protocol.note import NoteSigner
from provisioning import fleet as fleet_mod
from provisioning.broker import add_gateway_user, render_files
from provisioning.cli import main
from tests.provisioning.provision_live import init_fleet, mode, provision

SECRETS = (fleet_mod.GATEWAY_KEY, fleet_mod.ADMIN_TOKEN, fleet_mod.GATEWAY_BROKER_PASSWORD,
           fleet_mod.SERVICE_PASSWD)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_init_writes_every_secret_with_mode_0600(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    init_fleet(root, 1883, 8080)
    for rel in SECRETS:
        assert mode(root / rel) == 0o600, rel
    assert mode(root) == 0o700


def test_gateway_key_is_a_c2sp_signer_matching_the_fleets_verifier_key(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    init_fleet(root, 1883, 8080)
    signer = NoteSigner.from_private_text((root / fleet_mod.GATEWAY_KEY).read_text().strip())
    cfg = fleet_mod.load_fleet(root)
    assert signer.name == cfg.name == "test.fleet"
    assert signer.verifier_text() == cfg.gateway_verifier_key


def test_init_output_never_shows_a_secret(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "fleet"
    assert provision("init", str(root), "--broker", "mqtt://b:1883", "--gateway",
                     "http://g:8080", "--json") == 0
    printed = capsys.readouterr()
    token = (root / fleet_mod.ADMIN_TOKEN).read_text().strip()
    password = (root / fleet_mod.GATEWAY_BROKER_PASSWORD).read_text().strip()
    seed_b64 = (root / fleet_mod.GATEWAY_KEY).read_text().strip().split("+", 4)[4]
    for secret in (token, password, seed_b64):
        assert secret not in printed.out + printed.err


def test_init_refuses_to_overwrite_an_existing_fleet(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "fleet"
    init_fleet(root, 1883, 8080)
    before = snapshot(root)
    capsys.readouterr()
    assert provision("init", str(root), "--broker", "mqtt://x:1883",
                     "--gateway", "http://x:8080") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "already exists" in err
    assert snapshot(root) == before


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    assert provision("init", str(tmp_path / "stuff"), "--broker", "mqtt://x:1883",
                     "--gateway", "http://x:8080") == 2
    assert [p.name for p in (tmp_path / "stuff").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(("flag", "value"), [("--broker", "http://b:1883"),
                                        ("--gateway", "mqtt://g:8080"),
                                        ("--name", "has space")])
def test_bad_init_input_leaves_nothing(tmp_path: Path, flag: str, value: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    args = {"--broker": "mqtt://b:1883", "--gateway": "http://g:8080", flag: value}
    argv = ["init", str(tmp_path / "fleet")] + [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_generated_gateway_config_is_accepted_by_the_gateway(tmp_path: Path) -> None:
    load_config = pytest.importorskip(
        "gateway.config", reason="the gateway package is not importable yet").load_config
    root = tmp_path / "fleet"
    init_fleet(root, 1884, 8081)
    cfg = load_config(root / fleet_mod.GATEWAY_CONFIG)
    etc = root / fleet_mod.GATEWAY_ETC
    assert cfg.key_file == etc / "gateway.key"
    assert cfg.admin_token_file == etc / "admin.token"
    assert cfg.broker.password_file == etc / "broker.password"
    assert cfg.broker.username == "gateway"
    assert cfg.broker.port == 1884
    assert (cfg.http_host, cfg.http_port) == ("127.0.0.1", 8081)
    assert cfg.data_dir.resolve() == (root / "gateway/var/lib/edgeproof/gateway").resolve()


def test_gateway_config_listens_on_all_interfaces_for_a_remote_url(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    assert provision("init", str(root), "--broker", "mqtt://broker.lan:1883",
                     "--gateway", "http://gateway.lan:8080") == 0
    raw = tomllib.loads((root / fleet_mod.GATEWAY_CONFIG).read_text())
    assert raw["http"]["bind"] == "0.0.0.0:8080"
    assert fleet_mod.load_fleet(root).name == "gateway.lan/edgeproof"


def test_unknown_key_in_fleet_toml_is_named(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "fleet"
    init_fleet(root, 1883, 8080)
    path = root / fleet_mod.FLEET_FILE
    path.write_text(path.read_text().replace("[broker]\n", "[broker]\nreload = 1\n"))
    assert provision("recipient", "list", "--fleet", str(root)) == 2
    assert "broker.reload" in capsys.readouterr().err


def test_recipient_key_pair_secret_is_0600_and_public_half_matches(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "fleet"
    init_fleet(root, 1883, 8080)
    assert provision("recipient", "add", "acme", "--fleet", str(root)) == 0
    secret = root / "recipients/acme.key"
    assert mode(secret) == 0o600
    key = load_recipient_key(secret)
    assert (root / "recipients/acme.pub").read_text().strip() == key.public_key.hex()
    capsys.readouterr()
    assert provision("recipient", "add", "acme", "--fleet", str(root)) == 2
    assert "already exists" in capsys.readouterr().err
    assert provision("recipient", "list", "--fleet", str(root), "--json") == 0
    assert key.public_key.hex() in capsys.readouterr().out


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [[], ["init"], ["device"], ["device", "add"], ["device", "enroll"],
                ["device", "list"], ["device", "revoke"], ["device", "rotate"], ["recipient"],
                ["recipient", "add"], ["recipient", "list"], ["broker-config"]]
    for cmd in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*cmd, "--help"])
        assert exit_info.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_fleet_made_by_hand_earns_credit_and_names_a_verifier_key_file_that_exists(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 13: the by-hand path earned nothing (rate 0) and the README's
    # trusted-gateway.vkey was never written.
    root = tmp_path / "fleet"
    assert provision("init", str(root), "--broker", "mqtt://b:1883", "--gateway",
                     "http://g:8080") == 0
    out = capsys.readouterr().out
    cfg = fleet_mod.load_fleet(root)
    assert cfg.default_rate == fleet_mod.DEFAULT_RATE_MICRO_PER_HOUR > 0
    vkey = root / fleet_mod.VERIFIER_KEY_FILE
    assert vkey.read_text() == cfg.gateway_verifier_key + "\n"
    assert mode(vkey) == 0o644  # public: auditors and agents read it
    assert str(vkey) in out
    assert "1000000 micro-credits per hour" in out


def test_gateway_config_uses_its_broker_user_name_as_client_id(tmp_path: Path) -> None:
    # The broker binds client ids to user names; a different id would just be replaced.
    root = tmp_path / "fleet"
    init_fleet(root, 1883, 8080)
    broker = load_config(root / fleet_mod.GATEWAY_CONFIG).broker
    assert broker.client_id == broker.username == "gateway"
    raw = {"gateway": {"data_dir": "d", "key_file": "k", "admin_token_file": "t"},
           "broker": {"url": "mqtt://b:1883", "username": "gateway-2"}}
    assert parse_config(raw, tmp_path).broker.client_id == "gateway-2"  # a second worker


def test_second_gateway_user_gets_the_gateways_rights_and_no_device_name(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    init_fleet(root, 1883, 8080)
    cfg = fleet_mod.load_fleet(root)
    add_gateway_user(cfg, "gateway-2", "a long enough password")
    passwd, acl = render_files(cfg)
    assert [line.split(":")[0] for line in passwd.splitlines()] == ["gateway", "gateway-2"]
    assert "user gateway-2\ntopic read edgeproof/v1/devices/+/records\n" in acl
    for taken in ("gateway", "gateway-2", "0" * 32):
        with pytest.raises(ConfigError):
            add_gateway_user(cfg, taken, "x")
    assert mode(root / fleet_mod.SERVICE_PASSWD) == 0o600
