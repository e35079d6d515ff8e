"""edgeproof-sim refuses bad input in one line with exit 2, before anything starts.

Float options that are NaN, infinite, not positive or absurdly large once gave tracebacks
(``quality --hours nan``: ValueError; ``--hours 1e308``: OverflowError), busy loops
(``fleet --interval 0``) or runs that never end (``demo --duration nan``); ``fleet --fleet``
naming a path that does not exist silently ran the parent directory's fleet.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_sim.cli import fleet_dir, main
from osutil.cli import EXIT_USAGE
from protocol.errors import ConfigError

Capture = pytest.CaptureFixture[str]


def refused(capsys: Capture, *argv: str) -> str:
    """Run edgeproof-sim ARGV; assert exit 2 with one error line on stderr; return it."""
    assert main(list(argv)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("edgeproof-sim: error: "), err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("hours", ["nan", "inf", "-inf", "1e308", "0", "-1"])
def test_quality_hours_nan_inf_or_huge_is_a_usage_error_not_a_traceback(
        capsys: Capture, hours: str) -> None:
    err = refused(capsys, "quality", f"--hours={hours}")
    assert "--hours" in err


@pytest.mark.parametrize(("flag", "value"), [
    ("--interval", "0"),  # busy-looped, printing progress as fast as it could
    ("--interval", "0.001"),
    ("--interval", "nan"),
    ("--rate", "nan"),
    ("--rate", "inf"),
    ("--rate", "1e308"),
    ("--duration", "nan"),
    ("--duration", "1e308"),
    ("--batch-interval", "nan"),
    ("--batch-interval", "-1"),
])
def test_fleet_float_option_nan_zero_or_huge_is_a_usage_error(
        tmp_path: Path, capsys: Capture, flag: str, value: str) -> None:
    err = refused(capsys, "fleet", "--fleet", str(tmp_path), "--devices", "1", f"{flag}={value}")
    assert flag in err


@pytest.mark.parametrize("duration", ["nan", "inf", "1e308", "0"])
def test_demo_duration_nan_or_huge_is_a_usage_error(capsys: Capture, duration: str) -> None:
    err = refused(capsys, "demo", f"--duration={duration}")
    assert "--duration" in err


def test_fleet_path_that_does_not_exist_is_refused_not_replaced_by_the_parent_fleet(
        tmp_path: Path, capsys: Capture) -> None:
    (tmp_path / "fleet.toml").write_text("# the parent is a fleet: it must not be used\n")
    missing = tmp_path / "no-such-fleet"
    err = refused(capsys, "fleet", "--fleet", str(missing), "--devices", "1")
    assert str(missing) in err
    assert not missing.exists()


def test_fleet_path_may_be_the_fleet_toml_itself(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text("")
    assert fleet_dir(tmp_path) == tmp_path
    assert fleet_dir(tmp_path / "fleet.toml") == tmp_path
    (tmp_path / "other.toml").write_text("")
    with pytest.raises(ConfigError, match=r"other\.toml"):
        fleet_dir(tmp_path / "other.toml")


def test_quality_sites_file_not_utf8_is_a_usage_error(tmp_path: Path, capsys: Capture) -> None:
    sites = tmp_path / "sites.toml"
    sites.write_bytes(b"\xff\xfe[site]\n")
    err = refused(capsys, "quality", "--sites", str(sites), "--hours", "1")
    assert f"{sites}: not UTF-8 text" in err
