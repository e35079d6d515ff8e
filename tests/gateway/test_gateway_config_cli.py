"""Config validation and the thin CLI (called as main([...]))."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from firmware_sim.broker import MosquittoBroker
from gateway.cli import main
from gateway.config import HttpLimits, load_config
from gateway.ingest import subscription_filter
from osutil.sdnotify import Notifier
from protocol.errors import ConfigError
from protocol.keys import write_secret_file
from protocol.note import NoteVerifier
from tests.gateway.gwkit import write_gateway_files

REPO = Path(__file__).resolve().parents[2]


def test_example_config_is_valid_and_documented() -> None:
    config = load_config(REPO / "examples" / "gateway.toml")
    assert config.broker.port == 1883
    assert config.broker.client_id == "gateway"
    assert config.http_port == 8080
    assert config.checkpoints.every_leaves == 1000
    assert config.http == HttpLimits()  # the example documents the defaults
    assert config.limits.max_batch_bytes == 512 * 1024
    assert config.anchor == "local"
    assert config.db_path == Path("/var/lib/edgeproof-gateway/gateway.sqlite")


@pytest.mark.parametrize(("snippet", "named"), [
    ('[broker]\nurl = "mqtt://h"\nbogus = 1\n', "broker.bogus"),
    ('[broker]\nurl = "mqtt://h"\n[nope]\nx = 1\n', "[nope]"),
    ('[broker]\nurl = "http://h"\n', "broker.url"),
    ('[broker]\nurl = "mqtt://h"\nshared_group = "a/b"\n', "broker.shared_group"),
    ('[broker]\nurl = "mqtt://h"\n[http]\nbind = "nohost"\n', "http.bind"),
    ('[broker]\nurl = "mqtt://h"\n[http]\nmax_connections = 1\n', "http.max_connections"),
    ('[broker]\nurl = "mqtt://h"\n[http]\nmax_body_bytes = 1e9\n', "http.max_body_bytes"),
    ('[broker]\nurl = "mqtt://h"\n[limits]\nmax_batch_bytes = 10000000\n',
     "limits.max_batch_bytes"),
    ('[broker]\nurl = "mqtt://h"\n[checkpoints]\nevery_leaves = "many"\n',
     "checkpoints.every_leaves"),
    ('[broker]\nurl = "mqtt://h"\n[anchor]\nbackend = "carrier-pigeon"\n', "anchor.backend"),
    ('[broker]\nbogus_url = 1\n', "broker.bogus_url"),
])
def test_bad_config_names_the_key(tmp_path, snippet, named) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[gateway]\ndata_dir = "d"\nkey_file = "k"\nadmin_token_file = "t"\n'
                    + snippet)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(path)


def test_missing_required_key_is_named(tmp_path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[broker]\nurl = "mqtt://h"\n')
    with pytest.raises(ConfigError, match=re.escape("gateway.data_dir")):
        load_config(path)


def test_keygen_writes_a_private_key_and_prints_the_verifier(tmp_path, capsys) -> None:
    out = tmp_path / "gw.key"
    assert main(["keygen", "--name", "gw.example/log", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert NoteVerifier.from_text(printed["verifier_key"]).name == "gw.example/log"
    assert "PRIVATE" not in printed["verifier_key"]
    assert main(["keygen", "--name", "gw.example/log", "--out", str(out)]) == 2  # config error
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "already exists" in err
    assert main(["keygen", "--name", "bad name+", "--out", str(tmp_path / "x")]) == 2


def test_verifier_key_command_reads_the_config(tmp_path, capsys) -> None:
    files = write_gateway_files(tmp_path, broker_port=1)
    assert main(["verifier-key", "--config", str(files.config)]) == 0
    assert capsys.readouterr().out.strip() == files.key.verifier_text()


def test_run_refuses_a_key_file_others_can_read(tmp_path, capsys) -> None:
    files = write_gateway_files(tmp_path, broker_port=1)
    os.chmod(tmp_path / "gateway.key", 0o644)
    assert main(["run", "--config", str(files.config)]) == 2  # a configuration error
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "chmod 600" in err


def test_run_without_a_broker_fails_with_one_line(tmp_path, capsys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        files = write_gateway_files(tmp_path, broker_port=port)
        assert main(["run", "--config", str(files.config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "broker" in err


def test_every_command_has_help(capsys) -> None:
    for command in ([], ["run"], ["keygen"], ["verifier-key"], ["openapi"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
    assert "edgeproof-gateway" in capsys.readouterr().out


def test_openapi_command_writes_the_description(tmp_path) -> None:
    out = tmp_path / "openapi.json"
    assert main(["openapi", "--out", str(out)]) == 0
    assert "/v1/proofs/inclusion" in json.loads(out.read_text())["paths"]


def test_sd_notify_sends_datagrams_to_the_notify_socket(tmp_path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000"})
        assert notifier.watchdog_ms == 4000
        notifier.ready("log size 0")
        notifier.watchdog(0, progressed=True)
        assert server.recv(100) == b"READY=1\nSTATUS=log size 0"
        assert server.recv(100) == b"WATCHDOG=1"
    silent = Notifier({})
    assert not silent.enabled
    silent.ready("nothing happens")


def test_bad_broker_credentials_stop_the_gateway_with_one_line(tmp_path, capsys) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "gateway", "right"], check=True,
                   capture_output=True)
    # Started as root, mosquitto would drop to its own user and fail to read tmp_path.
    broker = MosquittoBroker(tmp_path / "broker", extra_config="user root\n",
                             password_file=passwd)
    broker.start()
    try:
        (tmp_path / "gw").mkdir()
        write_secret_file(tmp_path / "gw" / "broker-password", b"wrong\n")
        files = write_gateway_files(
            tmp_path / "gw", broker.port,
            broker_extra='username = "gateway"\npassword_file = "broker-password"')
        assert main(["run", "--config", str(files.config)]) == 1
    finally:
        broker.kill()
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "refused" in err
    assert "wrong" not in err


def test_shared_group_subscribes_to_a_shared_subscription(tmp_path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[gateway]\ndata_dir = "d"\nkey_file = "k"\nadmin_token_file = "t"\n'
                    '[broker]\nurl = "mqtt://h"\nshared_group = "workers"\n')
    config = load_config(path)
    assert (subscription_filter(config.broker)
            == "$share/workers/edgeproof/v1/devices/+/records")


@pytest.mark.parametrize("where", ["file", "proc"])
def test_run_with_data_dir_a_file_or_under_proc_names_gateway_data_dir(tmp_path, capsys,
                                                                        where) -> None:
    # Was a traceback from mkdir (FileExistsError, FileNotFoundError).
    files = write_gateway_files(tmp_path, broker_port=1)
    if where == "file":
        data_dir = tmp_path / "a-file"
        data_dir.write_text("not a directory\n")
    else:
        data_dir = Path("/proc/edgeproof-no-such/data")
    text = files.config.read_text()
    files.config.write_text(text.replace('data_dir = "data"', f'data_dir = "{data_dir}"'))
    assert main(["run", "--config", str(files.config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "gateway.data_dir" in err
    assert str(data_dir) in err


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
def test_openapi_out_unwritable_is_one_line_naming_the_file(tmp_path, capsys, where) -> None:
    out = tmp_path / "nodir" / "api.json" if where == "missing-dir" else tmp_path
    assert main(["openapi", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"--out {out}" in err


def test_verifier_key_config_not_utf8_is_one_line(tmp_path, capsys) -> None:
    config = tmp_path / "g.toml"
    config.write_bytes(b"\xff\xfe[gateway]\n")
    assert main(["verifier-key", "--config", str(config)]) == 2
    assert capsys.readouterr().err == f"edgeproof-gateway: error: {config}: not UTF-8 text\n"
