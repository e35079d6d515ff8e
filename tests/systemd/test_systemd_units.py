"""The unit files and the installer: systemd's own verifier and security score, W^X, shell.

``systemd-analyze`` runs offline on copies of the units whose ExecStart points at an
executable that exists in tmp_path (the real path, /opt/edgeproof/venv, only exists on an
installed machine).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = {"agent": REPO / "systemd/edgeproof-agent.service",
         "gateway": REPO / "systemd/edgeproof-gateway.service"}
INSTALL_SH = REPO / "systemd/install.sh"
MAX_EXPOSURE = 2.0
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if not Path(SYSTEMD_ANALYZE).exists():
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def unit_with_existing_exec(role: str, tmp_path: Path) -> Path:
    """Copy the unit into tmp_path with ExecStart pointing at an executable that exists."""
    exe = tmp_path / "bin" / f"edgeproof-{role}"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    text = UNITS[role].read_text()
    original = f"/opt/edgeproof/venv/bin/edgeproof-{role}"
    assert original in text
    unit = tmp_path / UNITS[role].name
    unit.write_text(text.replace(original, str(exe)))
    return unit


def directives(role: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNITS[role].read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("role", sorted(UNITS))
def test_unit_passes_systemd_analyze_verify(role: str, tmp_path: Path) -> None:
    result = analyze("verify", str(unit_with_existing_exec(role, tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("role", sorted(UNITS))
def test_unit_exposure_level_is_at_most_2(role: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    unit = unit_with_existing_exec(role, tmp_path)
    result = analyze("security", "--offline=yes", "--no-pager", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    level = float(match.group(1))
    line = f"systemd-analyze security {UNITS[role].name}: exposure level {level}"
    with capsys.disabled():  # shown in every run, not only with -s or -rA
        print(f"\n{line}")
    print(line)  # and kept in the test's captured output for the report
    assert level <= MAX_EXPOSURE, result.stdout


def syscalls(name: str, seen: dict[str, frozenset[str]]) -> frozenset[str]:
    """A system call, or a systemd group (``@...``) expanded by systemd's own list."""
    if not name.startswith("@"):
        return frozenset({name})
    if name not in seen:
        listed = analyze("syscall-filter", name).stdout.splitlines()
        calls: set[str] = set()
        for line in listed[1:]:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                calls |= syscalls(entry, seen)
        assert calls, f"systemd-analyze knows no {name}"
        seen[name] = frozenset(calls)
    return seen[name]


def test_agent_unit_lets_the_agent_ask_whether_the_clock_is_synchronised() -> None:
    # Before: ProtectClock=yes and @system-service refused adjtimex(2), also the read-only
    # call agent/clock.py makes, so every record said clock_synced=false and no owner's
    # grant was ever in force on an installed device.
    d = directives("agent")
    assert d.get("ProtectClock", ["no"]) == ["no"]
    seen: dict[str, frozenset[str]] = {}
    filters = d["SystemCallFilter"]
    assert not filters[0].startswith("~")  # an allow list, as systemd reads the first line
    allowed: set[str] = set()
    for value in filters:
        names = value.removeprefix("~").split()
        calls = set().union(*(syscalls(n, seen) for n in names))
        allowed = allowed - calls if value.startswith("~") else allowed | calls
    assert "adjtimex" in allowed
    # ... and nothing else of @clock, and no capability to set the clock with it.
    assert allowed & syscalls("@clock", seen) == {"adjtimex"}
    assert d["CapabilityBoundingSet"] == [""]


def test_agent_unit_reaches_only_the_named_gpio_chips() -> None:
    d = directives("agent")
    assert d["DevicePolicy"] == ["closed"]
    assert d["DeviceAllow"] == ["/dev/gpiochip0 rw", "/dev/gpiochip4 rw"]
    assert not any("*" in v for v in d["DeviceAllow"])  # DeviceAllow takes no wildcards
    assert "PrivateDevices" not in d  # it would hide /dev/gpiochip*
    assert d["SupplementaryGroups"] == ["gpio"]


def test_agent_unit_runs_the_agent_as_the_service_user() -> None:
    d = directives("agent")
    assert d["ExecStart"] == [
        "/opt/edgeproof/venv/bin/edgeproof-agent run --config /etc/edgeproof/agent.toml"]
    for key, value in {"Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30",
                       "User": "edgeproof", "StateDirectory": "edgeproof",
                       "ConfigurationDirectory": "edgeproof", "Restart": "on-failure",
                       "UMask": "0077", "MemoryDenyWriteExecute": "yes"}.items():
        assert d[key] == [value], key


def test_agent_unit_leaves_gpio_libraries_what_they_need() -> None:
    d = directives("agent")
    # lgpio makes FIFOs in the working directory; "/" is read-only under ProtectSystem=strict.
    assert d["WorkingDirectory"] == ["/run/edgeproof"]
    assert d["RuntimeDirectory"] == ["edgeproof"]
    # gpiozero and Blinka read the board revision from /proc/cpuinfo or /proc/device-tree.
    assert "ProcSubset" not in d
    assert d["ProtectSystem"] == ["strict"]


def test_gateway_unit_has_no_devices() -> None:
    d = directives("gateway")
    assert d["DevicePolicy"] == ["closed"]
    assert d["PrivateDevices"] == ["yes"]
    assert "DeviceAllow" not in d
    assert "SupplementaryGroups" not in d


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
_UNDER_MDWE = f"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("W^X is not enforced")
except OSError:
    pass
import sqlite3, ssl, tomllib
import nacl.signing, paho.mqtt.client
from protocol.keys import SigningKey, RecipientKey
from protocol.sealing import *  # noqa
key = SigningKey.generate()
from protocol.keys import verify_ed25519
verify_ed25519(key.public_key, b"m", key.sign(b"m"))
RecipientKey.generate().public_key
sqlite3.connect(":memory:").execute("select 1")
for optional in ("agent", "gateway.api", "fastapi", "uvicorn"):
    try:
        __import__(optional)
    except ImportError:
        pass
print("ok")
"""


def test_python_stack_runs_under_memory_deny_write_execute() -> None:
    """MemoryDenyWriteExecute=yes must not break CPython, PyNaCl (cffi) or the web stack.

    PR_SET_MDWE (Linux 6.3+) is the kernel's own form of the rule systemd enforces with a
    seccomp filter: no mapping may become writable and executable.
    """
    try:
        ctypes.CDLL(None).prctl  # noqa: B018
    except AttributeError:
        pytest.skip("no prctl in this libc")
    result = subprocess.run([sys.executable, "-c", _UNDER_MDWE], capture_output=True,
                            text=True, timeout=120, cwd=REPO, check=False)
    if result.returncode == 77:
        pytest.skip("kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_install_script_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run([shellcheck, str(INSTALL_SH)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout


def dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL_SH), "--dry-run", *args], capture_output=True,
                          text=True, timeout=30, check=False)


def test_install_dry_run_plans_user_venv_and_enabled_unit_for_each_role() -> None:
    if not Path("/etc/debian_version").exists():
        pytest.skip("install.sh supports Debian and Raspberry Pi OS only")
    for role, extras in (("agent", ""), ("gateway", "gateway")):
        result = dry_run("--role", role)
        assert result.returncode == 0, result.stderr
        plan = result.stdout
        assert f"systemctl enable edgeproof-{role}.service" in plan
        assert "python3 -m venv /opt/edgeproof/venv" in plan or "/opt/edgeproof/venv" in plan
        assert "/opt/edgeproof/venv/bin/pip install" in plan
        assert f"ln -sfn /opt/edgeproof/venv/bin/edgeproof-{role} /usr/local/bin/edgeproof-{role}" \
            in plan
        assert extras in plan
        assert "systemctl start" not in plan.replace("sudo systemctl start", "")


def test_uninstall_keeps_keys_and_state_unless_purged() -> None:
    if not Path("/etc/debian_version").exists():
        pytest.skip("install.sh supports Debian and Raspberry Pi OS only")
    kept = dry_run("--uninstall")
    assert kept.returncode == 0, kept.stderr
    assert "rm -rf /opt/edgeproof" in kept.stdout
    assert "kept /etc/edgeproof and /var/lib/edgeproof" in kept.stdout
    assert not re.search(r"rm -rf .*(/etc/edgeproof|/var/lib/edgeproof)", kept.stdout)
    purged = dry_run("--uninstall", "--role", "gateway", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert "rm -rf /var/lib/edgeproof/gateway /var/lib/edgeproof-gateway" in purged.stdout
    assert not re.search(r"rm -rf /etc/edgeproof|rm -rf /var/lib/edgeproof( |$)", purged.stdout)


def test_installer_rejects_unknown_role_with_one_line() -> None:
    result = dry_run("--role", "toaster")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "--role" in result.stderr
