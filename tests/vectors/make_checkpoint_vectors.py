"""Generate tests/vectors/checkpoints.json: signed tlog checkpoints for interop tests.

Run from the repository root::

    python tests/vectors/make_checkpoint_vectors.py

The output is deterministic: keys come from the fixed seeds below and Ed25519 signatures are
deterministic (RFC 8032), so re-running reproduces the committed file byte for byte
(tests/test_checkpoint.py checks this). Each entry has ``description``, ``note`` (the whole
signed note, https://c2sp.org/signed-note) and ``vkey`` (the verifier key text that must
verify it). Checkpoint bodies follow https://c2sp.org/tlog-checkpoint.

The seeds are public test values: never use them for a real log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # allow running as a plain script from anywhere
    sys.path.insert(0, str(_ROOT))

from protocol.checkpoint import Checkpoint, checkpoint_hash  # noqa: E402
from protocol.note import NoteSigner, sign_note  # noqa: E402

OUTPUT = Path(__file__).resolve().parent / "checkpoints.json"

ORIGIN = "edgeproof.example/gateway/1"
WITNESS_NAME = "witness.edgeproof.example/w1"

# Fixed, public, test-only Ed25519 seeds (32 bytes each; the ASCII of
# "edgeproof test log seed #1 gate-" and "edgeproof test witness seed #1!-").
LOG_SEED = bytes.fromhex("6564676570726f6f662074657374206c6f67207365656420233120676174652d")
WITNESS_SEED = bytes.fromhex("6564676570726f6f662074657374207769746e6573732073656564202331212d")

# RFC 9162 section 2.1.1: the root of the empty tree is SHA-256 of the empty string.
ROOT_SIZE_0 = hashlib.sha256(b"").digest()
# One leaf, the empty first leaf of the RFC 6962/9162 test data: SHA-256(0x00 || "").
ROOT_SIZE_1 = hashlib.sha256(b"\x00").digest()
# Root of the eight-leaf test tree used throughout the RFC 6962/9162 test vectors.
ROOT_SIZE_8 = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
# An arbitrary fixed value standing in for the gateway's balances commitment.
BALANCES_HASH = hashlib.sha256(b"edgeproof test vector balances v1").digest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def build_vectors() -> list[dict[str, str]]:
    """Return the vector entries, in file order (pure and deterministic)."""
    log = NoteSigner(ORIGIN, LOG_SEED)
    witness = NoteSigner(WITNESS_NAME, WITNESS_SEED)
    vkey = log.verifier_text()

    size0 = Checkpoint(ORIGIN, 0, ROOT_SIZE_0).sign(log)
    size1 = Checkpoint(ORIGIN, 1, ROOT_SIZE_1).sign(log)
    size8 = Checkpoint(ORIGIN, 8, ROOT_SIZE_8).sign(log)
    extended = Checkpoint(
        ORIGIN,
        8,
        ROOT_SIZE_8,
        (f"prev {_b64(checkpoint_hash(size8))}", f"balances {_b64(BALANCES_HASH)}"),
    ).sign(log)
    cosigned = sign_note(Checkpoint(ORIGIN, 8, ROOT_SIZE_8).to_body(), [witness, log])

    return [
        {
            "description": "size 0: empty tree, root = SHA-256('') (RFC 9162 2.1.1)",
            "note": size0,
            "vkey": vkey,
        },
        {
            "description": "size 1: one empty leaf, root = SHA-256(0x00) (RFC 9162 test data)",
            "note": size1,
            "vkey": vkey,
        },
        {
            "description": "size 8: the RFC 9162 eight-leaf test tree root",
            "note": size8,
            "vkey": vkey,
        },
        {
            "description": (
                "size 8 with extension lines: prev = base64 SHA-256 of the size-8 note above, "
                "balances = base64 of a fixed test hash"
            ),
            "note": extended,
            "vkey": vkey,
        },
        {
            "description": (
                "size 8 cosigned: an unrelated witness key signs first; verifiers must ignore "
                "that signature and accept the log's"
            ),
            "note": cosigned,
            "vkey": vkey,
        },
    ]


def render(vectors: list[dict[str, str]]) -> str:
    """Return the JSON file text for ``vectors`` (UTF-8, two-space indent, final newline)."""
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    """Write :data:`OUTPUT` from :func:`build_vectors`."""
    OUTPUT.write_text(render(build_vectors()), encoding="utf-8", newline="\n")


if __name__ == "__main__":
    main()
