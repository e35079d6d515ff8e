"""Failures a new user could not see (issue 13): receipts that stop, a broker URL without a
port, credit rate 0 and unsealed streams, no working sensor, no default status config, and
Ctrl-C before a command's own signal handling."""

from __future__ import annotations

import argparse
import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import agent.cli as agent_cli
from agent.clock import ManualClock
from agent.identity import create_identity
from agent.sensors import load_simulated_hardware
from agent.service import AgentService, NoWorkingSensors, ServiceOptions
from agent.status import collect_status
from firmware_sim.broker import MosquittoBroker
from osutil.brokerurl import describe_broker_url
from protocol.keys import load_device_key
from tests.agent.responder import Responder

Capture = pytest.CaptureFixture[str]
UNREACHABLE = "mqtt://127.0.0.1:9"  # discard port: nothing listens
OVERDUE_S = 10.0


def write_config(state_dir: Path, broker: str, gateway_key: str, **sections: Any) -> Path:
    """An agent.toml for ``state_dir`` (with its device key made), returned as a path."""
    lines = [f'[agent]\nstate_dir = "{state_dir}"', f'[mqtt]\nbroker = "{broker}"',
             f'[gateway]\nkey = "{gateway_key}"',
             "[uplink]\nbatch_interval_s = 0.1\nreceipt_timeout_s = 5.0\n"
             f"backoff_min_s = 0.1\nbackoff_max_s = 0.5\nreceipt_overdue_s = {OVERDUE_S}",
             "[service]\nfinal_flush_s = 0\nstatus_interval_s = 3600",
             "[outbox]\ncommit_window_s = 0"]
    lines += [sections.get("extra", "")]
    lines.append(sections.get("sensors", '[[sensors]]\nkind = "cpu_temp"\nstream = "cpu"\n'
                                          "interval_s = 1"))
    path = state_dir.parent / f"{state_dir.name}.toml"
    path.write_text("\n".join(lines) + "\n")
    state_dir.mkdir(parents=True, exist_ok=True)
    create_identity(state_dir / "device.key")
    return path


def notify_socket(tmp_path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "notify"))
    server.settimeout(0.2)
    return server


def drain(server: socket.socket) -> list[str]:
    got = []
    try:
        while True:
            got.append(server.recv(65536).decode())
    except TimeoutError:
        return got


def warnings_like(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and text in r.getMessage()]


def test_wrong_gateway_key_is_said_once_in_log_status_and_systemd_line_and_recovery_too(
        tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture,
        capsys: Capture) -> None:
    trusted = Responder(broker.url)  # the configured key; answers only later
    impostor = Responder(broker.url, seed=bytes(32 * [7])).start()
    state = tmp_path / "state"
    path = write_config(state, broker.url, trusted.verifier_key)
    cfg = agent_cli.load_config(path, {})
    impostor.register(load_device_key(cfg.key_file).public_key)
    clock = ManualClock()
    sim = load_simulated_hardware(1, tmp_path, clock)
    server = notify_socket(tmp_path)
    service = AgentService(cfg, clock, sim=sim, options=ServiceOptions(
        environ={"NOTIFY_SOCKET": str(tmp_path / "notify")}))
    caplog.set_level(logging.DEBUG)
    service.start()
    try:
        for _ in range(3):  # three readings, each sent and answered with a bad receipt
            clock.advance(1000)
            service.step()
            assert impostor.wait_for(lambda: service.uplink is not None and
                                     service.uplink.counters["bad_receipts"] >= 1)
        seen = service.uplink.counters["bad_receipts"] if service.uplink else 0
        assert impostor.wait_for(lambda: service.uplink is not None and
                                 service.uplink.counters["records_sent"] >= 3)
        assert len(warnings_like(caplog, "ignored a receipt that does not verify")) == 1
        assert seen >= 1
        assert not warnings_like(caplog, "no verified receipt")
        drain(server)

        clock.advance(int(OVERDUE_S * 1000))
        service.step()
        service.step()
        said = warnings_like(caplog, "no verified receipt for")
        assert len(said) == 1
        assert "last receipt refused" in said[0]
        assert "check gateway.key" in said[0]
        assert any("NO RECEIPTS for" in m and "check gateway.key" in m for m in drain(server))
        status = collect_status(state)["agent"]
        assert isinstance(status, dict)
        assert status["receipts"]["overdue"] is True
        assert "check gateway.key" in status["receipts"]["problem"]
        capsys.readouterr()
        assert agent_cli.main(["status", "--state-dir", str(state)]) == 0
        assert "receipts      OVERDUE: no verified receipt for" in capsys.readouterr().out

        impostor.stop()  # the right gateway answers from now on (same client id)
        trusted.register(load_device_key(cfg.key_file).public_key)
        trusted.start()

        def verified() -> bool:
            clock.advance(5000)  # each look passes a receipt time-out: the batches go again
            uplink = service.uplink
            return (uplink is not None and
                    uplink.receipt_health(clock.mono_ms()).last_verified_mono_ms is not None)

        assert trusted.wait_for(verified)
        service.step()
        assert [r for r in caplog.records if "verified receipts arrive again" in
                r.getMessage()]
        assert collect_status(state)["agent"]["receipts"]["overdue"] is False  # type: ignore[index]
        assert not any("NO RECEIPTS" in m for m in drain(server)[-1:])
    finally:
        service.shutdown()
        sim.close()
        server.close()
        impostor.stop()
        trusted.stop()


def test_broker_that_acknowledges_but_no_gateway_answers_is_named_as_the_likely_cause(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    # The case: a URL reaching some other Mosquitto, which PUBACKs everything.
    from tests.agent.uplinkkit import Device  # noqa: PLC0415 - the outbox+uplink rig

    device = Device(tmp_path / "dev", broker.url, Responder(broker.url).verifier_key)
    try:
        far_future = device.clock.mono_ms() + 10**9
        assert device.uplink.receipt_health(far_future).waiting_ms is None  # idle: never late
        device.write(3)
        device.uplink.start()
        assert Responder(broker.url).wait_for(lambda: device.uplink.counters["pubacks"] >= 1)
        health = device.uplink.receipt_health(far_future)
        assert health.waiting_ms is not None
        assert health.waiting_ms >= 10**9 - 10**6
        assert health.problem.startswith("no receipt arrived (")
        assert "PUBACKs from the broker" in health.problem
        assert broker.url in health.problem
        assert health.last_verified_mono_ms is None
    finally:
        device.close()


def test_broker_url_without_port_shows_the_default_port_it_will_use() -> None:
    assert describe_broker_url("mqtt://127.0.0.1") == (
        "mqtt://127.0.0.1:1883 (port 1883: the mqtt:// default)")
    assert describe_broker_url("mqtts://broker.example.net/") == (
        "mqtts://broker.example.net:8883 (port 8883: the mqtts:// default)")
    assert describe_broker_url("mqtt://127.0.0.1:1884") == "mqtt://127.0.0.1:1884"


def test_startup_says_where_it_connects_and_that_rate_0_and_plaintext_earn_and_seal_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: Capture) -> None:
    state = tmp_path / "state"
    key = Responder(UNREACHABLE).verifier_key
    sensors = ('[[sensors]]\nkind = "cpu_temp"\nstream = "cpu"\ninterval_s = 1\n'
               '[[sensors]]\nkind = "power_sense"\nstream = "tv"\npin = 17\ninterval_s = 1\n'
               '[usage]\ninput = "tv"\nrate_micro_per_hour = 0')
    path = write_config(state, UNREACHABLE, key, sensors=sensors)
    clock = ManualClock()
    sim = load_simulated_hardware(1, tmp_path, clock)
    caplog.set_level(logging.INFO)
    service = AgentService(agent_cli.load_config(path, {}), clock, sim=sim)
    service.start()
    service.shutdown()
    sim.close()
    messages = [r.getMessage() for r in caplog.records]
    assert "uplink: connecting to mqtt://127.0.0.1:9" in messages
    assert sum("usage.rate_micro_per_hour is 0" in m for m in messages) == 1
    assert sum("cpu, tv sent in plaintext" in m for m in messages) == 1
    capsys.readouterr()
    assert agent_cli.main(["status", "--state-dir", str(state), "--json"]) == 0
    agent = json.loads(capsys.readouterr().out)["agent"]
    assert agent["credit_rate_micro_per_hour"] == 0
    assert agent["plaintext_streams"] == ["cpu", "tv"]
    assert agent["uplink"]["broker"] == "mqtt://127.0.0.1:9"
    assert agent_cli.main(["status", "--state-dir", str(state)]) == 0
    text = capsys.readouterr().out
    assert "rate 0: earns nothing" in text
    assert "plaintext (no recipients): cpu, tv" in text


def test_laptop_without_sensor_hardware_refuses_to_run_measuring_nothing(
        tmp_path: Path, capsys: Capture) -> None:
    state = tmp_path / "state"
    sensors = ('[[sensors]]\nkind = "cpu_temp"\nstream = "cpu"\ninterval_s = 1\n'
               f'sensor_file = "{tmp_path / "no-thermal-zone"}"')
    path = write_config(state, UNREACHABLE, Responder(UNREACHABLE).verifier_key,
                        sensors=sensors)
    with pytest.raises(NoWorkingSensors, match="no sensor could be opened"):
        AgentService(agent_cli.load_config(path, {}), ManualClock()).start()
    capsys.readouterr()
    assert agent_cli.main(["run", "--config", str(path)]) == 2
    out = capsys.readouterr()
    line = [x for x in out.err.splitlines() if x]
    assert len(line) == 1
    assert "no sensor could be opened" in line[0]
    assert "--simulate" in line[0]
    assert "no-thermal-zone" in line[0]
    assert not (state / "outbox.sqlite").exists()  # refused before any state was opened


def test_status_without_flags_reads_the_installed_config_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture) -> None:
    monkeypatch.setattr(agent_cli, "DEFAULT_CONFIG", tmp_path / "missing.toml")
    assert agent_cli.run_cli(["status"], {}) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "missing.toml" in err
    assert "--state-dir" in err
    state = tmp_path / "state"
    path = write_config(state, UNREACHABLE, Responder(UNREACHABLE).verifier_key)
    clock = ManualClock()
    sim = load_simulated_hardware(1, tmp_path, clock)
    service = AgentService(agent_cli.load_config(path, {}), clock, sim=sim)
    service.start()
    service.shutdown()
    sim.close()
    monkeypatch.setattr(agent_cli, "DEFAULT_CONFIG", path)
    assert agent_cli.run_cli(["status"], {}) == 0
    assert f"state dir     {state} (from {path})" in capsys.readouterr().out


def _cli_mains() -> list[tuple[str, Callable[[list[str]], int]]]:
    from firmware_sim.cli import main as sim_main  # noqa: PLC0415
    from gateway.cli import main as gateway_main  # noqa: PLC0415
    from provisioning.cli import main as provision_main  # noqa: PLC0415
    from verifier.cli import main as verify_main  # noqa: PLC0415
    return [("edgeproof-agent", agent_cli.main), ("edgeproof-gateway", gateway_main),
            ("edgeproof-provision", provision_main), ("edgeproof-verify", verify_main),
            ("edgeproof-sim", sim_main)]


@pytest.mark.parametrize(("prog", "main"), _cli_mains())
def test_ctrl_c_before_a_command_handles_signals_is_one_line_and_exit_130(
        prog: str, main: Callable[[list[str]], int], monkeypatch: pytest.MonkeyPatch,
        capsys: Capture) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C arriving while the arguments are parsed, before any handler is installed.
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", interrupted)
    assert main([]) == 130
    out = capsys.readouterr()
    assert out.err == f"{prog}: interrupted\n"
    assert "Traceback" not in out.out
