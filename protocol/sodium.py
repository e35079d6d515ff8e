"""PyNaCl's own cffi handle on libsodium, for the two calls on the sign path.

PyNaCl's public bindings check their arguments and format error messages on every call,
failing or not: a few microseconds of Python around each libsodium call, paid once per
signed and once per sealed reading (profiled with bench/protocol_bench.py and
bench/agent_bench.py). Where every argument is ours (bytes, keys of checked length), the
hot path calls the same libsodium functions through PyNaCl's own cffi module instead;
tests hold each shortcut to the public binding's output. A PyNaCl that moved the module
leaves ``ffi`` and ``lib`` None, and the callers use the public binding.
"""

from __future__ import annotations

from typing import Any

try:
    from nacl import _sodium

    ffi: Any = _sodium.ffi
    lib: Any = _sodium.lib
except ImportError:  # pragma: no cover - a PyNaCl that moved it: the public binding is used
    ffi = lib = None
