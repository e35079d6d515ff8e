"""The import rules of docs/ARCHITECTURE.md, enforced over every .py file of every package.

Imports point one way: ``protocol`` imports none of our packages; ``osutil`` imports
``protocol`` only; ``agent``, ``gateway``, ``provisioning`` and ``verifier`` import
``protocol`` and ``osutil`` and never each other (provisioning and the verifier talk to
the gateway over HTTP, like any outsider); ``owner`` adds ``verifier`` (its HTTP client and
record opener); ``firmware_sim`` may import everything. Every
import statement counts, including those inside functions: a lazy import is still a
dependency. Module names loaded from configuration (the agent's named simulated-hardware
backend) are strings, not imports, and are not covered here.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EVERYTHING = frozenset({"protocol", "osutil", "agent", "gateway", "provisioning", "verifier",
                        "owner", "firmware_sim", "rewards"})
# Which of our packages each package may import (its own is always allowed).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "protocol": frozenset(),
    "osutil": frozenset({"protocol"}),
    "agent": frozenset({"protocol", "osutil"}),
    "gateway": frozenset({"protocol", "osutil", "rewards"}),
    "provisioning": frozenset({"protocol", "osutil"}),
    "verifier": frozenset({"protocol", "osutil", "rewards"}),
    "rewards": frozenset({"protocol", "osutil"}),
    # The owner is a recipient of its own devices' data: it reads and opens records, and
    # reads and submits documents, with the verifier's client, opener and printers.
    "owner": frozenset({"protocol", "osutil", "verifier", "rewards"}),
    "firmware_sim": EVERYTHING,
}
# The two packages everything stands on also keep their third-party footprint small:
# protocol is pure (PyNaCl only); osutil's clients wrap requests (JSON-RPC) and paho (MQTT).
THIRD_PARTY: dict[str, frozenset[str]] = {
    "protocol": frozenset({"nacl"}),
    "osutil": frozenset({"requests", "urllib3", "paho"}),
}


def imported_modules(path: Path, package: str) -> Iterator[tuple[int, str]]:
    """Yield (line, module) for every import in ``path`` (relative ones resolved)."""
    depth = len(path.relative_to(REPO / package).parts)  # module's depth inside the package
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, node.module or ""
            elif node.level > depth:
                yield node.lineno, "<relative import above the package>"
            else:
                yield node.lineno, package


def violations(package: str) -> list[str]:
    """Every import in ``package`` that its rules forbid, as ``file:line: module``."""
    allowed = MAY_IMPORT[package] | {package}
    third_party = THIRD_PARTY.get(package)
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line, module in imported_modules(path, package):
            top = module.split(".")[0]
            if top in EVERYTHING or top.startswith("<"):
                bad = top not in allowed
            elif top == "tests":
                bad = True  # runtime code never imports the test suite
            else:
                bad = (third_party is not None and top not in third_party
                       and top not in sys.stdlib_module_names and top != "__future__")
            if bad:
                found.append(f"{path.relative_to(REPO)}:{line}: {module}")
    return found


def test_every_package_has_import_rules() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages == set(MAY_IMPORT), "add the new package to MAY_IMPORT and ARCHITECTURE.md"


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_package_imports_only_what_the_architecture_allows(package: str) -> None:
    assert violations(package) == []


def test_rule_checker_catches_a_forbidden_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    for n, (package, source) in enumerate([
        ("agent", "def f():\n    from gateway.store import LogStore\n"),
        ("verifier", "import provisioning.fleet\n"),
        ("osutil", "from agent import config\n"),
        ("protocol", "import requests\n"),
        ("gateway", "from tests.gateway import gwkit\n"),
        ("agent", "from ... import gateway\n"),
    ]):
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / f"bad{n}.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert [len(violations(p)) for p in ("agent", "verifier", "osutil", "protocol",
                                         "gateway")] == [2, 1, 1, 1, 1]
    assert violations("firmware_sim") == []
