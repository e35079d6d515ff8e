"""Child processes the demo and the test harness start (gateway, agents): each in its own
process group, each stopped by signalling that group, none left behind.

:class:`GatewayProcess` is the one way to run the real gateway as a child and wait until its
``/healthz`` says it serves (the demo's :class:`firmware_sim.stack.Stack`, the fault harness in
``tests/harness``, the gateway crash test and the gateway benchmark all use it).

Why a process group per child: a Ctrl-C at the terminal goes to the terminal's foreground
process group, so children in their own groups do not all see it at once; the demo stops
them in order instead (agents first so they flush, then the gateway so it signs a final
checkpoint). Signalling the group rather than the pid also reaches anything the child
started while it runs. On Linux each child also asks the kernel for SIGTERM when the demo dies
(``PR_SET_PDEATHSIG``), so even a ``kill -9`` of the demo leaves no orphan behind.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from osutil.deathsig import die_with_parent
from protocol.errors import EdgeproofError

GATEWAY_START_TIMEOUT_S = 60.0  # a bound for a slow, loaded machine; returns when healthy


class StartError(EdgeproofError):
    """A child process exited at start or did not become ready in time."""


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
        return log_tail(self.log, lines)


def log_tail(log: Path, lines: int = 3) -> str:
    """The last ``lines`` non-empty lines of ``log``, joined by `` | `` ("" if unreadable)."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join([line for line in text.splitlines() if line.strip()][-lines:])


def spawn(name: str, argv: Sequence[str], log: Path, *,
          env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Child:
    """Start ``argv`` in a new process group with stdout and stderr to ``log``.

    Returns the child. Raises OSError if the program cannot be started.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            list(argv), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd, process_group=0,
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


class Process:
    """A child (see :func:`spawn`) that can be started again: spawn, SIGKILL, SIGTERM."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, *,
                 cwd: Path | None = None) -> None:
        self.name, self.argv, self.log, self.cwd = name, list(argv), log, cwd
        self.child: Child | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.alive()

    @property
    def pid(self) -> int | None:
        return None if self.child is None else self.child.pid

    def spawn(self) -> None:
        """Start the program (again). Raises OSError if it cannot be started."""
        self.child = spawn(self.name, self.argv, self.log, cwd=self.cwd)
        self.starts += 1

    def kill(self) -> int | None:
        """SIGKILL and reap (nothing is flushed, nothing is closed); return the exit code."""
        if self.child is None:
            return None
        child, self.child = self.child, None
        child.signal(signal.SIGKILL)
        return child.process.wait(timeout=10)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s`` (then SIGKILL); return the exit code."""
        if self.child is None:
            return None
        child, self.child = self.child, None
        return child.stop(timeout_s)

    def send(self, sig: int) -> None:
        """Send ``sig`` to the running child's process group (no-op when stopped)."""
        if self.child is not None:
            self.child.signal(sig)

    def log_tail(self, lines: int = 3) -> str:
        """The last ``lines`` non-empty lines of the log, joined by `` | ``."""
        return log_tail(self.log, lines)


def gateway_healthy(url: str, timeout_s: float = 1.0) -> bool:
    """Whether the gateway at ``url`` answers ``GET /healthz`` with 200.

    Plain http.client on purpose: no proxy from the environment, no extra dependency.
    """
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                      timeout=timeout_s)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class GatewayProcess(Process):
    """The real gateway, ``python -m gateway.cli run --config FILE``, as a restartable child;
    :meth:`start` returns once ``/healthz`` says it serves."""

    def __init__(self, config: Path, url: str, log: Path, *,
                 extra_args: Sequence[str] = (), cwd: Path | None = None) -> None:
        super().__init__("gateway", [sys.executable, "-m", "gateway.cli", "run", "--config",
                                     str(config), *extra_args], log, cwd=cwd)
        self.config, self.url = config, url

    def start(self, timeout_s: float = GATEWAY_START_TIMEOUT_S,
              check: Callable[[], None] = lambda: None) -> None:
        """Start the gateway and wait until it is healthy (see :meth:`wait_healthy`)."""
        self.spawn()
        self.wait_healthy(timeout_s, check)

    def wait_healthy(self, timeout_s: float = GATEWAY_START_TIMEOUT_S,
                     check: Callable[[], None] = lambda: None) -> None:
        """Return once ``/healthz`` answers 200. ``check()`` runs on every poll and may raise
        to give up (the demo's Ctrl-C).

        Raises StartError with the log's last lines if the gateway exits or is not healthy
        within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            check()
            if not self.running:
                raise StartError(f"the gateway exited: {self.log_tail()}")
            if gateway_healthy(self.url):
                return
            time.sleep(0.05)
        raise StartError(f"the gateway did not become healthy within {timeout_s:.0f} s: "
                         f"{self.log_tail()}")
