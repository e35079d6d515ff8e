"""Every edgeproof command line follows docs/CLI.md: the walk over each parser tree.

A user who learnt one CLI must not trip over the next: each has ``--version``; every
command and subcommand says what it does (a help line in its parent's list and a
description on its own page); ``--log-level`` takes any case; a fleet is always named with
``--fleet FLEET_DIR``; configuration errors exit 2 everywhere.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.cli import _parser as agent_parser
from agent.cli import main as agent_main
from firmware_sim.cli import _parser as sim_parser
from firmware_sim.cli import main as sim_main
from gateway.cli import _parser as gateway_parser
from gateway.cli import main as gateway_main
from osutil.cli import EXIT_BROKEN_PIPE, EXIT_USAGE, log_level, package_version, run_command
from owner.cli import _parser as owner_parser
from owner.cli import main as owner_main
from provisioning.cli import build_parser as provision_parser
from provisioning.cli import main as provision_main
from validator.cli import _parser as validator_parser
from validator.cli import main as validator_main
from verifier.cli import _parser as verify_parser
from verifier.cli import main as verify_main

CLIS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[..., int]]] = {
    "edgeproof-agent": (agent_parser, agent_main),
    "edgeproof-gateway": (gateway_parser, gateway_main),
    "edgeproof-provision": (provision_parser, provision_main),
    "edgeproof-verify": (verify_parser, verify_main),
    "edgeproof-sim": (sim_parser, sim_main),
    "edgeproof-validator": (validator_parser, validator_main),
    "edgeproof-owner": (owner_parser, owner_main),
}


def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser,
                                                                       str | None]]:
    """Yield (command path, parser, help line in the parent's list) for every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", sub, helps.get(name)
                yield from walk(sub, f"{path} {name}")


def every_parser() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for prog, (build, _) in CLIS.items():
        top = build()
        yield prog, top
        for path, sub, _ in walk(top, prog):
            yield path, sub


@pytest.mark.parametrize("prog", CLIS)
def test_every_cli_prints_its_version(prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        CLIS[prog][1](["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"{prog} {package_version()}"
    assert package_version() != "unknown"  # the test environment installs the package


@pytest.mark.parametrize("prog", CLIS)
def test_no_subcommand_without_help_and_description(prog: str) -> None:
    top = CLIS[prog][0]()
    assert top.description
    commands = list(walk(top, prog))
    assert commands
    for path, sub, help_line in commands:
        assert help_line, f"{path}: no help line in its parent's command list"
        assert sub.description, f"{path}: --help has no description"


def test_log_level_takes_any_case_in_every_cli() -> None:
    found = []
    for path, parser in every_parser():
        for action in parser._actions:
            if "--log-level" in action.option_strings:
                found.append(path)
                assert action.type is log_level, path
                assert action.choices is None, path
                for given, parsed in (("DEBUG", "debug"), ("Info", "info"), ("error", "error")):
                    argv = [*_required(parser), "--log-level", given]
                    assert parser.parse_known_args(argv)[0].log_level == parsed, path
    assert sorted(found) == ["edgeproof-agent run", "edgeproof-gateway run"]


def test_bad_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gateway_main(["run", "--config", "x.toml", "--log-level", "loud"])
    assert exit_info.value.code == EXIT_USAGE
    assert "invalid log level 'loud'" in capsys.readouterr().err


def test_a_fleet_is_named_by_the_fleet_option_everywhere() -> None:
    named = []
    for path, parser in every_parser():
        for action in parser._actions:
            if action.dest in {"fleet", "fleet_dir"} and action.help != argparse.SUPPRESS:
                named.append(path)
                assert action.option_strings == ["--fleet"], path
                assert action.metavar == "FLEET_DIR", path
    assert "edgeproof-provision init" in named
    assert "edgeproof-sim fleet" in named


def test_config_errors_exit_2_in_every_cli(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[nonsense]\n")
    assert agent_main(["status", "--config", str(bad)]) == EXIT_USAGE
    assert gateway_main(["verifier-key", "--config", str(bad)]) == EXIT_USAGE
    assert provision_main(["recipient", "list", "--fleet", str(tmp_path)]) == EXIT_USAGE
    assert provision_main(["init", "--broker", "mqtt://h:1", "--gateway", "http://h:2"]) \
        == EXIT_USAGE
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 4, errors
    assert all(": error: " in line for line in errors), errors


def test_old_fleet_spellings_still_work(tmp_path: Path) -> None:
    init = provision_parser().parse_args(["init", str(tmp_path), "--broker", "mqtt://h:1",
                                          "--gateway", "http://h:2"])
    assert init.fleet_dir == tmp_path
    assert init.fleet is None
    fleet = sim_parser().parse_args(["fleet", "--config", str(tmp_path), "--devices", "1"])
    assert fleet.fleet == tmp_path


def _required(parser: argparse.ArgumentParser) -> list[str]:
    """Placeholder values for the parser's required options (enough to parse)."""
    argv: list[str] = []
    for action in parser._actions:
        if action.required and action.option_strings:
            argv += [action.option_strings[0], "x"]
    return argv


def test_config_file_not_utf8_is_one_line_exit_2_in_every_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Every command reading TOML ended in a UnicodeDecodeError traceback.
    bad = tmp_path / "g.toml"
    bad.write_bytes(b"\xff\xfe[gateway]\n")
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "fleet.toml").write_bytes(b"\xff\xfe[fleet]\n")
    runs: list[tuple[Callable[..., int], list[str]]] = [
        (agent_main, ["status", "--config", str(bad)]),
        (agent_main, ["run", "--config", str(bad)]),
        (gateway_main, ["verifier-key", "--config", str(bad)]),
        (gateway_main, ["run", "--config", str(bad)]),
        (provision_main, ["recipient", "list", "--fleet", str(fleet)]),
        (validator_main, ["once", "--site", str(bad), "--gateway", "http://127.0.0.1:1",
                          "--signing-key", "s", "--recipient-key", "r"]),
        (sim_main, ["quality", "--sites", str(bad)]),
    ]
    for command, argv in runs:
        assert command(argv) == EXIT_USAGE, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1, (argv, err)
        assert "not UTF-8 text" in err, (argv, err)


def test_wallet_status_bad_address_is_a_usage_error_not_a_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert owner_main(["wallet", "status", "--address", "0xzz", "--gateway",
                       "http://127.0.0.1:1", "--rpc", "http://127.0.0.1:1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("edgeproof-owner: error: --address: ")


def test_run_command_turns_a_broken_pipe_into_exit_141_without_a_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise BrokenPipeError(32, "Broken pipe")
    assert run_command("prog", body) == EXIT_BROKEN_PIPE == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv", [["edgeproof-owner", "show", "--key", "{key}"],
                                  ["edgeproof-owner", "--help"],
                                  ["edgeproof-owner", "--version"],
                                  ["edgeproof-provision", "--help"]])
def test_stdout_closed_early_ends_quietly_with_141(tmp_path: Path, argv: list[str]) -> None:
    # `edgeproof-owner show --key K | head -0`: every command printed a BrokenPipeError
    # traceback. The pipe's reading end is closed before the command starts, so its first
    # write fails for certain.
    key = tmp_path / "owner.key"
    assert owner_main(["init", "--key", str(key)]) == 0
    script = Path(sys.executable).parent / argv[0]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([str(script), *(a.format(key=key) for a in argv[1:])],
                              stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60, check=False)
    finally:
        os.close(write_end)
    assert done.stderr == ""  # no traceback, no "Exception ignored" at exit
    # argparse's --help and --version swallow the write error themselves and exit 0.
    assert done.returncode == (EXIT_BROKEN_PIPE if argv[1] == "show" else 0)
