"""Waiting for a condition in tests: never a fixed sleep, always a bounded poll."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _poll(condition: Callable[[], T], timeout_s: float, every_s: float) -> T | None:
    """``condition()``'s first truthy value within ``timeout_s``, else None (it is asked
    once more after the bound has passed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(every_s)


def eventually(condition: Callable[[], T], what: str, timeout_s: float = 30.0,
               every_s: float = 0.02) -> T:
    """Poll ``condition`` until it returns a truthy value and return it.

    Raises AssertionError naming ``what`` if it has not within ``timeout_s`` (generous:
    the bound is there only so a broken test ends).
    """
    value = _poll(condition, timeout_s, every_s)
    if not value:
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
    return value


def within(condition: Callable[[], object], timeout_s: float = 30.0,
           every_s: float = 0.02) -> bool:
    """Poll ``condition`` like :func:`eventually`; return whether it held within
    ``timeout_s`` instead of raising (for waits whose callers assert the result with
    their own message)."""
    return bool(_poll(condition, timeout_s, every_s))
