"""The C library, opened once, for the few calls made through ctypes (adjtimex, prctl).

``ctypes.util.find_library("c")`` runs ``ldconfig -p`` (or a compiler) in a subprocess and
parses its output on every call: tens of milliseconds, and a fork, which ``die_with_parent``
must not do between fork and exec. The C library is already mapped into every CPython
process on Linux, so ``dlopen(NULL)`` finds its symbols without any search. Opened at
import, before any fork, so a child never opens it.
"""

from __future__ import annotations

import ctypes


def _open() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - a platform whose loader refuses dlopen(NULL)
        return None


LIBC = _open()
