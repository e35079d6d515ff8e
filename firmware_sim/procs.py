"""Child processes the demo starts (gateway, agents): each in its own process group, each
stopped by signalling that group, none left behind.

Why a process group per child: a Ctrl-C at the terminal goes to the terminal's foreground
process group, so children in their own groups do not all see it at once; the demo stops
them in order instead (agents first so they flush, then the gateway so it signs a final
checkpoint). Signalling the group rather than the pid also reaches anything the child
started while it runs. On Linux each child also asks the kernel for SIGTERM when the demo dies
(``PR_SET_PDEATHSIG``), so even a ``kill -9`` of the demo leaves no orphan behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Child:
    """One started child process with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child's process group (no-op once it has exited)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def wait(self, timeout_s: float) -> int | None:
        """Wait up to ``timeout_s``; return the exit code, or None if it still runs."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM the group, wait ``timeout_s``, then SIGKILL it; return the exit code."""
        self.signal(signal.SIGTERM)
        code = self.wait(timeout_s)
        if code is None:
            self.signal(signal.SIGKILL)
            code = self.process.wait()
        return code

    def log_tail(self, lines: int = 3) -> str:
        """The last ``lines`` non-empty lines of the child's log, joined by `` | ``."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return " | ".join([line for line in text.splitlines() if line.strip()][-lines:])


def spawn(name: str, argv: Sequence[str], log: Path, *,
          env: Mapping[str, str] | None = None) -> Child:
    """Start ``argv`` in a new process group with stdout and stderr to ``log``.

    Returns the child. Raises OSError if the program cannot be started.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            list(argv), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, process_group=0,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, before any thread runs
        )
    return Child(name, process, log)


def stop_all(children: Sequence[Child], timeout_s: float) -> dict[str, int]:
    """Stop children in parallel: SIGTERM all, wait for all up to ``timeout_s``, kill the rest.

    Returns each child's exit code by name.
    """
    for child in children:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    codes: dict[str, int] = {}
    for child in children:
        code = child.wait(max(0.0, deadline - time.monotonic()))
        codes[child.name] = child.stop(0) if code is None else code
    return codes


def signal_and_wait(process: subprocess.Popen[bytes], sig: int, timeout_s: float) -> None:
    """Send ``sig`` to a running process and reap it; SIGKILL if it outlives ``timeout_s``."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie of ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
