"""JSON from outside, parsed with its nesting bounded first.

json's parser recurses once per level of arrays and objects: on ``[[[...`` it raises
RecursionError, or, in a process where a library raised the recursion limit (py_ecc, which
the chain libraries import, sets 100,000), overflows the C stack and kills the process.
Every JSON document edgeproof reads from someone else (proof and audit bundles, gateway
answers, Ethereum node answers) goes through :func:`parse_json`.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_JSON_DEPTH = 32  # bundles and gateway answers nest a few levels deep
# A JSON string, or an unterminated one up to the end (linear: possessive, never backtracks).
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")


def parse_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for untrusted text, its nesting bounded before it is parsed.

    Raises ValueError for text that is not JSON (bytes in no UTF encoding included) or whose
    arrays and objects nest deeper than about ``max_depth``. json's parser recurses once per
    level: on ``[[[...`` it raises RecursionError, or, in a process where a library raised
    the recursion limit (py_ecc sets 100 000), overflows the C stack and crashes.
    """
    if isinstance(text, bytes):
        text = text.decode(json.detect_encoding(text), "surrogatepass")  # as json.loads does
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    for _ in range(max_depth):  # each pass removes at least the innermost level
        if not brackets:
            break
        brackets = brackets.replace("[]", "").replace("{}", "")
    if brackets:
        raise ValueError(f"nested deeper than {max_depth} levels, or unbalanced")
    try:
        return json.loads(text)
    except RecursionError:  # cannot happen within max_depth; fail closed all the same
        raise ValueError("nested too deep") from None
