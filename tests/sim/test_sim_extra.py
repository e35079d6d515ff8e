"""`make demo` installs only the ``sim`` extra: with nothing else importable, every module of
edgeproof must import.

A newcomer's first `make demo` on a fresh clone failed once with "demo needs the 'sim'
extra (no module named 'httpx')" although the extra was installed: the demo had come to
call the gateway with httpx and to pay through the payout contract (eth-abi), and only the
``dev`` extra, which every test venv has, held those. This test runs a fresh interpreter
in which a module of any installed distribution outside the sim extra's closure (its
requirements and theirs, read from the installed metadata: the test tools, the Pi's
drivers) raises ModuleNotFoundError, as on that venv, and imports every module of every
package edgeproof ships. The same holds for the roles systemd/install.sh installs: a
device's agent with no extra (a Pi adds ``pi``, whose drivers load only on real hardware)
and a gateway host with ``gateway`` and ``provision``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
OURS = ("protocol", "osutil", "agent", "gateway", "provisioning", "firmware_sim", "verifier",
        "owner", "rewards", "validator")
# Imported by the verify pool's forkserver only: it ties the importer's life to its parent's.
NOT_IMPORTED = {"gateway.forkserver_init"}

IMPORT_ALL = """
import importlib, json, pkgutil, sys
from importlib.abc import MetaPathFinder

blocked, ours, skip = set(sys.argv[1].split(",")), sys.argv[2].split(","), set(sys.argv[3:])

class OutsideTheExtra(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, OutsideTheExtra())
failed, imported = {}, 0
for package in ours:
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        if info.name in skip or info.name.endswith(".__main__"):
            continue
        try:
            importlib.import_module(info.name)
            imported += 1
        except Exception as exc:
            failed[info.name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"imported": imported, "failed": failed}))
"""


def closure(name: str, extras: set[str]) -> set[str]:
    """The distributions ``name[extras]`` needs, itself included (canonical names)."""
    seen: set[tuple[str, str]] = set()
    todo = [(name, "")] + [(name, extra) for extra in extras]
    while todo:
        dist, extra = todo.pop()
        if (canonicalize_name(dist), extra) in seen:
            continue
        seen.add((canonicalize_name(dist), extra))
        try:
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue  # a requirement whose marker does not hold on this machine
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            if req.marker is None and extra:
                continue  # a base requirement, taken when the base was visited
            todo.append((req.name, ""))
            todo += [(req.name, e) for e in req.extras]
    return {dist for dist, _ in seen}


def outside_the_extras(extras: set[str]) -> set[str]:
    """Top-level modules of installed distributions that ``edgeproof[extras]`` does not need."""
    needed = closure("edgeproof", extras)
    blocked = set()
    for module, dists in metadata.packages_distributions().items():
        if module in OURS or module in sys.stdlib_module_names:
            continue
        if not any(canonicalize_name(d) in needed for d in dists):
            blocked.add(module)
    return blocked


def test_the_extras_closures_are_read_from_the_metadata() -> None:
    needed = closure("edgeproof", {"sim"})
    # what the demo runs on, and what it must not need
    assert {"pynacl", "paho-mqtt", "fastapi", "httpx", "eth-abi", "requests"} <= needed
    assert not {"pytest", "hypothesis", "mypy", "selenium"} & needed
    blocked = outside_the_extras({"sim"})
    assert {"pytest", "hypothesis", "selenium"} <= blocked
    assert not {"nacl", "paho", "httpx", "eth_abi"} & blocked
    assert {"fastapi", "requests", "httpx", "pytest"} <= outside_the_extras(set())  # a device


# (extras installed, the packages whose every module must import with just those; what
# they import of protocol/ and osutil/ comes along)
INSTALLS = {
    "make demo": ({"sim"}, OURS),
    "device (install.sh agent)": (set(), ("agent",)),
    "gateway host (install.sh gateway)": ({"gateway", "provision"}, ("gateway", "provisioning")),
}


@pytest.mark.parametrize("install", sorted(INSTALLS))
def test_every_module_imports_with_only_its_extras_installed(install: str) -> None:
    extras, packages = INSTALLS[install]
    blocked = outside_the_extras(extras)
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL, ",".join(sorted(blocked)),
                           ",".join(packages), *sorted(NOT_IMPORTED)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}, f"modules that need more than {install} installs"
    assert result["imported"] > 10
