"""edgeproof-provision refuses bad input in one line (exit 2) and changes nothing.

Each test is named after a failure the input audit reproduced: a fleet left behind by a
refused ``init``, broker files written before ``--run-as`` was looked up, a ``--data-dir``
whose newline added a line to mosquitto.conf, a device.json holding a JSON list, a
``timeout_s`` too large for a socket, a sites file that is not UTF-8.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protocol.errors import ConfigError
from protocol.keys import write_secret_file
from provisioning import fleet as fleet_mod
from provisioning import mosquitto
from provisioning.broker import OUT_DIR_MARKER
from tests.provisioning.provision_live import init_fleet, provision

Capture = pytest.CaptureFixture[str]


def one_error_line(capsys: Capture) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert ": error: " in err, err
    assert "Traceback" not in err
    return err


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the fleet but its (empty) lock file, which commands create to lock."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != fleet_mod.LOCK_FILE}


@pytest.fixture
def fleet_root(tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    init_fleet(root, 1883, 8080)
    return root


def test_init_with_negative_rate_leaves_no_fleet_behind(tmp_path: Path,
                                                        capsys: Capture) -> None:
    root = tmp_path / "f1"
    assert provision("init", "--fleet", str(root), "--broker", "mqtt://127.0.0.1:1",
                     "--gateway", "http://127.0.0.1:2", "--rate", "-1") == 2
    assert "--rate" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []
    # ...so the same name can be used at once with a good rate.
    assert provision("init", "--fleet", str(root), "--broker", "mqtt://127.0.0.1:1",
                     "--gateway", "http://127.0.0.1:2", "--rate", "5") == 0


def test_init_refuses_a_fleet_toml_that_would_not_load_before_taking_the_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever init writes is loaded before the rename: a value the loader refuses (here a
    # rate bypassing the up-front check) leaves nothing behind.
    req = fleet_mod.InitRequest(root=tmp_path / "f2", broker_url="mqtt://h:1",
                                gateway_url="http://h:2")
    monkeypatch.setattr(fleet_mod, "_render_fleet_toml",
                        lambda *_: "[fleet]\nname = \"x\"\n")
    with pytest.raises(ConfigError):
        fleet_mod.init_fleet(req)
    assert list(tmp_path.iterdir()) == []


def _broker_config(root: Path, out: Path, *extra: str) -> int:
    return provision("broker-config", "--fleet", str(root), "--out", str(out), *extra)


@pytest.mark.skipif(os.geteuid() != 0, reason="--run-as is looked up only as root")
def test_broker_config_run_as_unknown_user_writes_nothing(fleet_root: Path, tmp_path: Path,
                                                          capsys: Capture) -> None:
    out = tmp_path / "out"
    before = snapshot(fleet_root)
    assert _broker_config(fleet_root, out, "--run-as", "nosuchuser-edgeproof") == 2
    assert "--run-as" in one_error_line(capsys)
    assert not out.exists()
    assert snapshot(fleet_root) == before


@pytest.mark.parametrize(("extra", "named"), [
    (["--port", "99999"], "--port"),
    (["--port=-1"], "--port"),
    (["--port", "0"], "--port"),
    (["--bind", "x y"], "--bind"),
    (["--bind", "127.0.0.1\ninclude_dir /etc"], "--bind"),
    (["--bind", ""], "--bind"),
    (["--data-dir", "/tmp/a\ninclude_dir /etc"], "--data-dir"),
    (["--run-as", "mosquitto\ninclude_dir /etc"], "--run-as"),
    (["--tls-port", "8883", "--cafile", "/nonexistent/ca.crt", "--certfile",
      "/nonexistent/b.crt", "--keyfile", "/nonexistent/b.key"], "--cafile"),
    (["--tls-port", "70000", "--cafile", "/etc/hostname", "--certfile",
      "/etc/hostname", "--keyfile", "/etc/hostname"], "--tls-port"),
])
def test_broker_config_bad_port_bind_or_newline_in_a_path_is_refused_before_writing(
        fleet_root: Path, tmp_path: Path, capsys: Capture, extra: list[str],
        named: str) -> None:
    # A good run first: a refused one must not move the remembered out_dir either.
    good = tmp_path / "good"
    assert _broker_config(fleet_root, good, "--run-as", "root") == 0
    capsys.readouterr()
    before = snapshot(fleet_root)
    out = tmp_path / "out"
    assert _broker_config(fleet_root, out, *extra) == 2
    assert named in one_error_line(capsys)
    assert not out.exists()
    assert snapshot(fleet_root) == before
    assert (fleet_root / "broker" / OUT_DIR_MARKER).read_text().strip() == str(good)


def test_broker_config_newline_in_out_dir_is_refused(fleet_root: Path, tmp_path: Path,
                                                     capsys: Capture) -> None:
    out = tmp_path / "out\ninclude_dir /etc"
    assert _broker_config(fleet_root, out) == 2
    assert "--out" in one_error_line(capsys)
    assert not out.exists()


def test_mosquitto_conf_never_renders_a_newline_inside_a_value() -> None:
    settings = mosquitto.ListenerSettings(
        port=1883, bind=None, data_dir=Path("/tmp/a\ninclude_dir /etc"),
        password_file=Path("/x/passwd"), acl_file=Path("/x/acl"))
    with pytest.raises(ConfigError, match="persistence_location"):
        mosquitto.render_mosquitto_conf(settings, fleet_name="f")


def test_device_json_that_is_a_list_is_a_one_line_error(fleet_root: Path,
                                                        capsys: Capture) -> None:
    bundle = fleet_root / "devices" / "xx"
    bundle.mkdir(parents=True)
    write_secret_file(bundle / "device.json", b"[]\n")
    assert provision("device", "list", "--fleet", str(fleet_root), "--local") == 2
    err = one_error_line(capsys)
    assert str(bundle / "device.json") in err
    assert "not a device record" in err


def test_fleet_timeout_s_1e308_is_a_config_error_not_an_overflow(fleet_root: Path,
                                                                 capsys: Capture) -> None:
    path = fleet_root / fleet_mod.FLEET_FILE
    path.write_text(path.read_text().replace("timeout_s = 10", "timeout_s = 1e308"))
    assert "1e308" in path.read_text()
    assert provision("device", "list", "--fleet", str(fleet_root)) == 2
    assert "gateway.timeout_s" in one_error_line(capsys)


def test_fleet_toml_not_utf8_is_a_one_line_error(fleet_root: Path, capsys: Capture) -> None:
    path = fleet_root / fleet_mod.FLEET_FILE
    path.write_bytes(b"\xff\xfe" + path.read_bytes())
    assert provision("device", "list", "--fleet", str(fleet_root), "--local") == 2
    assert f"{path}: not UTF-8 text" in one_error_line(capsys)


def test_site_file_not_utf8_is_a_one_line_error(fleet_root: Path, capsys: Capture) -> None:
    site = fleet_root / "sites" / "room.toml"
    site.parent.mkdir()
    site.write_bytes(b"\xff\xfe[site]\n")
    assert provision("site", "list", "--fleet", str(fleet_root)) == 2
    assert f"{site}: not UTF-8 text" in one_error_line(capsys)
