"""systemd/install.sh run for real against a fake root (EDGEPROOF_ROOT), never this machine's /.

Uninstall and purge change files, so they are run on a copy of the installed layout in
tmp_path: the units, /etc/edgeproof of both roles, /var/lib/edgeproof with the agent's state
and the gateway's log, /opt/edgeproof, and Mosquitto's config swapped as docs/OPERATIONS.md
§2.4 does it. stdin is never a terminal here, so a purge can only be confirmed with --yes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_SH = REPO / "systemd/install.sh"

pytestmark = pytest.mark.skipif(
    not Path("/etc/debian_version").exists() or shutil.which("systemctl") is None,
    reason="install.sh supports Debian and Raspberry Pi OS with systemd only")

GATEWAY_FILES = ("etc/edgeproof/gateway.toml", "etc/edgeproof/gateway.key",
                 "etc/edgeproof/admin.token", "var/lib/edgeproof/gateway/log.sqlite")
AGENT_FILES = ("etc/edgeproof/agent.toml", "var/lib/edgeproof/device.key",
               "var/lib/edgeproof/outbox.sqlite")
SHARED = "etc/edgeproof/broker.password"


def installed_root(tmp_path: Path) -> Path:
    """Both roles installed under tmp_path/root, Mosquitto's config swapped for edgeproof's."""
    root = tmp_path / "root"
    for role in ("agent", "gateway"):
        unit = root / f"etc/systemd/system/edgeproof-{role}.service"
        unit.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / f"systemd/edgeproof-{role}.service", unit)
    for name in (*GATEWAY_FILES, *AGENT_FILES, SHARED, "opt/edgeproof/venv/bin/python",
                 "etc/mosquitto/edgeproof/mosquitto.conf"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    (root / "etc/mosquitto/mosquitto.conf.debian").write_text("debian's own\n")
    (root / "etc/mosquitto/mosquitto.conf").symlink_to("edgeproof/mosquitto.conf")
    (root / "usr/local/bin").mkdir(parents=True)
    for cmd in ("edgeproof-agent", "edgeproof-gateway", "edgeproof-verify"):
        (root / "usr/local/bin" / cmd).symlink_to(root / "opt/edgeproof/venv/bin" / cmd)
    (root / "usr/local/bin/edgeproof-provision").write_text("someone else's\n")
    return root


def install_sh(root: Path, *args: str, python: str | None = None
               ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEPROOF_ROOT": str(root)}
    if python is not None:
        env["EDGEPROOF_PYTHON"] = python
    return subprocess.run(["bash", str(INSTALL_SH), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=env, timeout=60, check=False)


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (f"-> {os.readlink(p)}" if p.is_symlink()
                                       else p.read_text() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


def test_help_shows_the_usage_and_no_script_code() -> None:
    done = subprocess.run(["bash", str(INSTALL_SH), "--help"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0
    assert "--purge" in done.stdout
    assert "--yes" in done.stdout
    assert "set -euo pipefail" not in done.stdout
    assert "#" not in done.stdout


def test_purge_without_confirmation_deletes_nothing(tmp_path: Path) -> None:
    root = installed_root(tmp_path)
    before = tree(root)
    done = install_sh(root, "--uninstall", "--role", "gateway", "--purge")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "signing key" in done.stderr
    assert "--yes" in done.stderr
    assert tree(root) == before  # not even the unit was removed


def test_purge_without_a_role_is_refused(tmp_path: Path) -> None:
    root = installed_root(tmp_path)
    before = tree(root)
    done = install_sh(root, "--uninstall", "--purge", "--yes")
    assert done.returncode == 1
    assert "--role" in done.stderr
    assert tree(root) == before


def test_gateway_purge_deletes_only_the_gateway_files(tmp_path: Path) -> None:
    root = installed_root(tmp_path)
    done = install_sh(root, "--uninstall", "--role", "gateway", "--purge", "--yes")
    assert done.returncode == 0, done.stderr
    for name in (*GATEWAY_FILES, "etc/systemd/system/edgeproof-gateway.service"):
        assert not (root / name).exists(), name
    assert not (root / "var/lib/edgeproof/gateway").exists()
    for name in (*AGENT_FILES, SHARED, "etc/systemd/system/edgeproof-agent.service",
                 "opt/edgeproof/venv/bin/python"):  # the agent still runs from it
        assert (root / name).exists(), name


def test_agent_purge_keeps_the_gateway_key_and_log(tmp_path: Path) -> None:
    root = installed_root(tmp_path)
    done = install_sh(root, "--uninstall", "--role", "agent", "--purge", "--yes")
    assert done.returncode == 0, done.stderr
    for name in AGENT_FILES:
        assert not (root / name).exists(), name
    for name in (*GATEWAY_FILES, SHARED, "etc/systemd/system/edgeproof-gateway.service"):
        assert (root / name).exists(), name
    assert (root / "etc/mosquitto/mosquitto.conf").is_symlink()  # the gateway's broker stays


def test_last_role_purged_leaves_no_edgeproof_files(tmp_path: Path) -> None:
    root = installed_root(tmp_path)
    for role in ("agent", "gateway"):
        done = install_sh(root, "--uninstall", "--role", role, "--purge", "--yes")
        assert done.returncode == 0, done.stderr
    left = [name for name in tree(root) if "edgeproof" in name]
    assert left == ["etc/mosquitto/edgeproof", "etc/mosquitto/edgeproof/mosquitto.conf",
                    "usr/local/bin/edgeproof-provision"]  # not a link of ours: kept


def test_commands_leave_the_path_with_the_last_unit(tmp_path: Path) -> None:
    root = installed_root(tmp_path)
    bin_dir = root / "usr/local/bin"
    assert install_sh(root, "--uninstall", "--role", "agent").returncode == 0
    assert (bin_dir / "edgeproof-verify").is_symlink()  # the gateway still uses the venv
    assert install_sh(root, "--uninstall", "--role", "gateway").returncode == 0
    assert sorted(p.name for p in bin_dir.iterdir()) == ["edgeproof-provision"]


def test_gateway_uninstall_restores_the_mosquitto_config_and_keeps_keys(tmp_path: Path) -> None:
    root = installed_root(tmp_path)
    done = install_sh(root, "--uninstall", "--role", "gateway")
    assert done.returncode == 0, done.stderr
    conf = root / "etc/mosquitto/mosquitto.conf"
    assert not conf.is_symlink()
    assert conf.read_text() == "debian's own\n"
    assert not (root / "etc/mosquitto/mosquitto.conf.debian").exists()
    for name in (*GATEWAY_FILES, *AGENT_FILES, SHARED):
        assert (root / name).exists(), name
    assert "kept" in done.stdout


def test_install_refuses_a_python_older_than_3_11_in_one_line(tmp_path: Path) -> None:
    old = tmp_path / "python3.9"
    old.write_text('#!/bin/sh\ncase "$2" in *print*) echo 3.9 ;; *) exit 1 ;; esac\n')
    old.chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    done = install_sh(root, "--dry-run", "--role", "agent", python=str(old))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert f"Python 3.11 or newer is required; {old} is 3.9" in done.stderr
    assert list(root.iterdir()) == []
