"""edgeproof-agent's command line and configuration: keygen, config errors, status."""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import pytest

from agent.cli import _parser, build_run_config, main, run_cli
from agent.clock import ManualClock
from agent.config import load_config
from agent.run import run_agent
from agent.sensors import load_simulated_hardware
from agent.service import AgentService, ServiceOptions
from protocol import reasons
from protocol.errors import ConfigError, KeyFileError
from protocol.keys import load_device_key
from protocol.note import NoteSigner
from tests.agent.responder import Responder

REPO = Path(__file__).resolve().parents[2]
GATEWAY_KEY = Responder("mqtt://127.0.0.1:1").verifier_key
Capture = pytest.CaptureFixture[str]


def minimal(tmp_path: Path, extra: str = "", agent: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
state_dir = "state"
{agent}
[gateway]
key = "{GATEWAY_KEY}"
[mqtt]
broker = "mqtt://127.0.0.1:9"
{extra}
""")
    return path


def test_example_config_is_valid_and_complete() -> None:
    cfg = load_config(REPO / "examples" / "agent.toml", {})
    assert cfg.state_dir == Path("/var/lib/edgeproof")
    assert cfg.mqtt.tls
    assert cfg.mqtt.port == 8883
    assert cfg.mqtt.username
    assert cfg.outbox.commit_window_ms == 5000
    assert cfg.outbox.full_policy == "drop-oldest"
    assert [s.stream for s in cfg.sensors] == ["climate", "cpu", "tv", "presence"]
    assert cfg.owner is not None
    # With an owner every stream is sealed to it alone: the configured recipients are
    # ignored (an operator's config grants nothing; the owner's consents do).
    owner = cfg.owner.sealing_key
    assert cfg.stream_recipients() == {s: (owner,) for s in ("climate", "cpu", "tv",
                                                              "presence")}
    assert cfg.ignored_recipients() == {"climate": ("acme",), "presence": ("acme",)}
    assert cfg.usage is not None
    assert cfg.usage.input == "tv"
    assert cfg.backend == "hardware"  # only --simulate selects simulated hardware
    assert cfg.local_mqtt is not None
    assert cfg.local_mqtt.connection.host == "homeassistant.local"
    assert cfg.local_mqtt.connection.username != cfg.mqtt.username  # its own credentials
    assert cfg.local_mqtt.streams is None  # every stream without recipients
    assert cfg.metrics is not None
    assert cfg.metrics.textfile.suffix == ".prom"


@pytest.mark.parametrize(("extra", "named"), [
    ("[outbox]\nfull_policy = \"drop-newest\"", "outbox.full_policy"),
    ("[outbox]\ncommit_windw_s = 1", "outbox.commit_windw_s: unknown key"),
    ("[uplink]\nbatch_max_records = 0", "uplink.batch_max_records"),
    ("[recipients]\nacme = \"abcd\"", "recipients.acme"),
    ("[[sensors]]\nkind = \"cpu_temp\"\nstream = \"cpu\"\ninterval_s = 1\n"
     "recipients = [\"nobody\"]", "sensors[0].recipients"),
    ("[usage]\ninput = \"tv\"\nrate_micro_per_hour = 1", "usage.input"),
])
def test_bad_config_is_refused_with_the_key_named(tmp_path: Path, extra: str,
                                                  named: str) -> None:
    path = minimal(tmp_path, extra)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(path, {})


def test_simulation_cannot_be_chosen_in_the_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"agent\.backend: unknown key"):
        load_config(minimal(tmp_path, agent='backend = "simulated"'), {})


def test_bad_broker_url_and_gateway_key_are_named(tmp_path: Path) -> None:
    path = minimal(tmp_path)
    with pytest.raises(ConfigError, match=r"mqtt\.broker"):
        load_config(path, {("mqtt", "broker"): "http://example.org"})
    with pytest.raises(ConfigError, match=r"gateway\.key"):
        load_config(path, {("gateway", "key"): "name+0000+AAAA"})


def test_flags_override_environment_which_overrides_the_file(tmp_path: Path,
                                                             capsys: Capture) -> None:
    path = minimal(tmp_path)
    env = {"EDGEPROOF_STATE_DIR": str(tmp_path / "from-env")}
    assert load_config(path, {}).state_dir == tmp_path / "state"  # relative to the file
    args = _parser().parse_args(["run", "--config", str(path)])
    assert build_run_config(args, env).state_dir == tmp_path / "from-env"
    args = _parser().parse_args(["run", "--config", str(path), "--state-dir",
                                 str(tmp_path / "flag")])
    assert build_run_config(args, env).state_dir == tmp_path / "flag"


def test_keygen_prints_the_public_key_and_refuses_to_overwrite(tmp_path: Path,
                                                               capsys: Capture) -> None:
    state = tmp_path / "state"
    assert main(["keygen", "--state-dir", str(state)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == load_device_key(state / "device.key").public_key.hex()
    assert (state / "device.key").stat().st_mode & 0o777 == 0o600
    assert main(["keygen", "--state-dir", str(state), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "refusing to overwrite" in err
    assert load_device_key(state / "device.key").public_key.hex() == printed


def test_run_without_config_or_simulate_fails_with_one_line(capsys: Capture) -> None:
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeproof-agent: error: ")
    assert err.count("\n") == 1


def test_laptop_mode_names_the_missing_flag(tmp_path: Path, capsys: Capture) -> None:
    assert run_cli(["run", "--simulate", "--state-dir", str(tmp_path)], {}) == 2
    assert "--broker" in capsys.readouterr().err


def test_run_refuses_a_key_file_others_can_read(tmp_path: Path, capsys: Capture) -> None:
    path = minimal(tmp_path)
    assert main(["keygen", "--state-dir", str(tmp_path / "state")]) == 0
    (tmp_path / "state" / "device.key").chmod(0o604)
    assert main(["run", "--config", str(path)]) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_run_refuses_a_password_file_others_can_read_and_never_prints_it(
        tmp_path: Path, capsys: Capture) -> None:
    secret = "correct horse battery staple"
    (tmp_path / "mqtt.password").write_text(secret)
    (tmp_path / "mqtt.password").chmod(0o640)
    path = minimal(tmp_path, '[mqtt]\nusername = "dev"\npassword_file = "mqtt.password"')
    path.write_text(path.read_text().replace('[mqtt]\nbroker = "mqtt://127.0.0.1:9"\n', "")
                    .replace('[mqtt]\n', '[mqtt]\nbroker = "mqtt://127.0.0.1:9"\n'))
    assert main(["keygen", "--state-dir", str(tmp_path / "state")]) == 0
    capsys.readouterr()
    assert main(["run", "--config", str(path)]) == 2
    out = capsys.readouterr()
    assert "mqtt.password" in out.err
    assert "chmod 600" in out.err
    assert secret not in out.err + out.out


def test_run_refuses_a_local_broker_password_file_others_can_read_before_opening_anything(
        tmp_path: Path, capsys: Capture) -> None:
    secret = "owner's broker password"
    (tmp_path / "local.password").write_text(secret)
    (tmp_path / "local.password").chmod(0o644)
    path = minimal(tmp_path, '[local_mqtt]\nbroker = "mqtt://127.0.0.1:9"\nusername = "ha"\n'
                   'password_file = "local.password"\n[[sensors]]\nkind = "cpu_temp"\n'
                   'stream = "cpu"\ninterval_s = 1')
    assert main(["keygen", "--state-dir", str(tmp_path / "state")]) == 0
    capsys.readouterr()
    assert main(["run", "--config", str(path), "--simulate"]) == 2
    out = capsys.readouterr()
    assert "local.password" in out.err
    assert "chmod 600" in out.err
    assert secret not in out.err + out.out
    assert not (tmp_path / "state" / "outbox.sqlite").exists()  # refused before opening


def test_status_reports_outbox_dead_letters_drops_and_credit(tmp_path: Path,
                                                            capsys: Capture) -> None:
    path = minimal(tmp_path, "[service]\nfinal_flush_s = 0\n[[sensors]]\nkind = \"cpu_temp\"\n"
                   "stream = \"cpu\"\ninterval_s = 1")
    assert main(["keygen", "--state-dir", str(tmp_path / "state")]) == 0
    cfg = load_config(path, {})
    clock = ManualClock()
    sim = load_simulated_hardware(1, tmp_path, clock)
    service = AgentService(cfg, clock, sim=sim)
    service.start()
    for _ in range(3):
        clock.advance(1000)
        service.step()
    service.outbox.dead_letter(0, reasons.FUTURE_TIMESTAMP)
    service.shutdown()
    sim.close()
    capsys.readouterr()
    assert main(["status", "--config", str(path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["outbox"]["depth"] == 2
    assert status["outbox"]["bytes"] > 0
    assert status["outbox"]["dead_letters"] == {reasons.FUTURE_TIMESTAMP: 1}
    assert status["outbox"]["dropped"] == 0
    assert status["outbox"]["last_receipt_ms"] is None
    assert set(status["credit"]) == {"accrued_micro", "sent_micro", "settled_micro",
                                     "corrupt_credits"}
    assert main(["status", "--state-dir", str(tmp_path / "state")]) == 0
    text = capsys.readouterr().out
    assert "2 records" in text
    assert "future_timestamp: 1" in text


def test_status_of_a_directory_without_agent_state_fails_cleanly(tmp_path: Path,
                                                                 capsys: Capture) -> None:
    assert main(["status", "--state-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("command", [[], ["keygen"], ["run"], ["status"]])
def test_every_command_has_help(command: list[str], capsys: Capture) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: edgeproof-agent" in capsys.readouterr().out


VKEY = NoteSigner("gateway.test", bytes(32)).verifier_text()


def test_relative_override_paths_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "agent.toml").write_text(
        '[mqtt]\nbroker = "mqtt://127.0.0.1:1883"\nusername = "u"\n'
        f'password_file = "broker.password"\n[gateway]\nkey = "{VKEY}"\n')
    monkeypatch.chdir(tmp_path)
    from_file = load_config(config_dir / "agent.toml", {})
    assert from_file.mqtt.password_file == config_dir / "broker.password"
    overridden = load_config(config_dir / "agent.toml",
                             {("mqtt", "password_file"): "secrets/pw",
                              ("agent", "state_dir"): "state"})
    assert overridden.mqtt.password_file == tmp_path / "secrets" / "pw"
    assert overridden.state_dir == tmp_path / "state"


def test_a_run_that_fails_after_its_logging_started_leaves_no_logging_behind(
        tmp_path: Path, capsys: Capture) -> None:
    # main() may run again in this process (tests): a later run or test must not log into
    # this run's stdout (pytest's capture, closed by then) or at its level.
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    path = minimal(tmp_path)
    assert main(["keygen", "--state-dir", str(tmp_path / "state")]) == 0
    (tmp_path / "state" / "device.key").chmod(0o604)  # refused once the run has started
    assert main(["run", "--config", str(path), "--log-level", "DEBUG"]) == 2
    assert "chmod 600" in capsys.readouterr().err
    assert (list(root.handlers), root.level) == before


@pytest.mark.parametrize("key", ["interval_s", "min_spacing_s"])
def test_sensor_interval_1e308_is_a_config_error_not_an_overflow(
        tmp_path: Path, capsys: Capture, key: str) -> None:
    # 1e308 passed the > 0 check and overflowed in the DHT22 driver once the agent ran.
    values = {"interval_s": "10", "min_spacing_s": "2", key: "1e308"}
    path = minimal(tmp_path, "[[sensors]]\nkind = \"dht22\"\nstream = \"climate\"\npin = 4\n"
                   + "".join(f"{k} = {v}\n" for k, v in values.items()))
    with pytest.raises(ConfigError, match=re.escape(f"sensors[0].{key}")):
        load_config(path, {})
    assert main(["run", "--config", str(path), "--simulate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"sensors[0].{key}: must be a number > 0 and <= 86400" in err


def test_run_with_a_missing_device_key_leaves_no_lock_behind(tmp_path: Path,
                                                             capsys: Capture) -> None:
    # The state directory and agent.lock were made before the key was looked at.
    path = minimal(tmp_path)
    state = tmp_path / "state"
    assert main(["run", "--config", str(path), "--simulate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "device.key" in err
    assert not state.exists()


def test_run_agent_checks_the_key_before_making_the_state_directory(tmp_path: Path) -> None:
    config = load_config(minimal(tmp_path), {})
    with pytest.raises(KeyFileError):
        run_agent(config, ManualClock(0), ServiceOptions(), threading.Event())
    assert not config.state_dir.exists()
