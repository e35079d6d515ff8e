"""py_ecc (imported by eth_account) raises the interpreter's recursion limit to 100,000 for
good; with it, json's C decoder overflows the C stack on deeply nested input instead of
raising RecursionError. A gateway with a chain backend died of one 64 KiB request body of
"[" (SIGSEGV). rewards/ethkey.py, the one place eth_account is imported, puts it back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys, threading
before = sys.getrecursionlimit()
from rewards.ethkey import address_of
address_of(bytes([1]) * 32)  # imports eth_account, and py_ecc with it
assert sys.getrecursionlimit() == before, sys.getrecursionlimit()
outcome = []
def parse():  # on a thread, as the gateway's HTTP server parses a body
    try:
        json.loads("[" * 65536)
    except RecursionError:
        outcome.append("RecursionError")
thread = threading.Thread(target=parse)
thread.start()
thread.join()
print(outcome[0])
"""


def test_a_deeply_nested_json_body_raises_after_the_chain_libraries_are_loaded() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # -11: SIGSEGV
    assert done.stdout.strip() == "RecursionError"
