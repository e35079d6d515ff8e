"""Every edgeproof command line follows docs/CLI.md: the walk over each parser tree.

A user who learnt one CLI must not trip over the next: each has ``--version``; every
command and subcommand says what it does (a help line in its parent's list and a
description on its own page); ``--log-level`` takes any case; a fleet is always named with
``--fleet FLEET_DIR``; configuration errors exit 2 everywhere.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.cli import _parser as agent_parser
from agent.cli import main as agent_main
from firmware_sim.cli import _parser as sim_parser
from firmware_sim.cli import main as sim_main
from gateway.cli import _parser as gateway_parser
from gateway.cli import main as gateway_main
from osutil.cli import EXIT_USAGE, log_level, package_version
from owner.cli import _parser as owner_parser
from owner.cli import main as owner_main
from provisioning.cli import build_parser as provision_parser
from provisioning.cli import main as provision_main
from verifier.cli import _parser as verify_parser
from verifier.cli import main as verify_main

CLIS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[..., int]]] = {
    "edgeproof-agent": (agent_parser, agent_main),
    "edgeproof-gateway": (gateway_parser, gateway_main),
    "edgeproof-provision": (provision_parser, provision_main),
    "edgeproof-verify": (verify_parser, verify_main),
    "edgeproof-sim": (sim_parser, sim_main),
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
