"""edgeproof-sim on a base install: --help works; a command without its extra is one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Runs edgeproof-sim in a fresh interpreter in which the sim extra's modules cannot be imported,
# as on `pip install edgeproof` without extras.
BASE_INSTALL = """
import sys
from importlib.abc import MetaPathFinder

class NoExtras(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"rich", "requests", "httpx", "fastapi", "uvicorn",
                                  "prometheus_client"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoExtras())
from firmware_sim.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_base(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BASE_INSTALL, *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_help_needs_no_extra() -> None:
    done = run_base("--help")
    assert done.returncode == 0, done.stderr
    assert "demo" in done.stdout
    assert "fleet" in done.stdout


def test_demo_without_sim_extra_is_one_line_error() -> None:
    done = run_base("demo", "--devices", "1", "--duration", "1")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("edgeproof-sim: error: demo needs the 'sim' extra")
    assert "pip install 'edgeproof[sim]'" in done.stderr


def test_fleet_without_sim_extra_is_one_line_error(tmp_path: Path) -> None:
    done = run_base("fleet", "--config", str(tmp_path), "--devices", "1")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "fleet needs the 'sim' extra" in done.stderr
