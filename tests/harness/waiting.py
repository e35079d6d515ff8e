"""Waiting for a condition in tests: never a fixed sleep, always a bounded poll."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(condition: Callable[[], T], what: str, timeout_s: float = 30.0,
               every_s: float = 0.02) -> T:
    """Poll ``condition`` until it returns a truthy value and return it.

    Raises AssertionError naming ``what`` if it has not within ``timeout_s`` (generous:
    the bound is there only so a broken test ends).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)
