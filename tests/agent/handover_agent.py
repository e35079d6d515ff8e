"""The agent, noting outside itself every reading its sensors hand over.

``python -m tests.agent.handover_agent --handover FILE -- <edgeproof-agent run args>`` (run
from the repository root) builds and runs the agent exactly as ``edgeproof-agent run``
does (:func:`agent.cli.run_config`, :func:`agent.run.run_agent`) and passes
``ServiceOptions.on_reading``, which appends each reading a sensor hands over to FILE
(``pid stream mono_ms``, one ``write`` with O_APPEND) before the agent writes it. The kill
test compares that file, which survives ``kill -9`` like any written data, with what the
gateway logged. ``mono_ms`` is CLOCK_MONOTONIC, so (stream, mono_ms) names one reading
across restarts of the agent on one machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from agent.cli import run_config
from agent.clock import SystemClock
from agent.run import run_agent, setup_logging, stop_on_signals
from agent.sensors import Reading
from agent.service import ServiceOptions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="handover-agent", description=__doc__.split("\n")[1])
    parser.add_argument("--handover", required=True, metavar="FILE")
    parser.add_argument("agent_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    stop = threading.Event()
    stop_on_signals(stop, "handover-agent")
    fd = os.open(args.handover, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    pid = os.getpid()

    def note(reading: Reading) -> None:
        os.write(fd, f"{pid} {reading.stream} {reading.mono_ms}\n".encode())

    config = run_config([a for a in args.agent_args if a != "--"], os.environ)
    setup_logging(config.log_level)
    options = ServiceOptions(environ=dict(os.environ), on_reading=note)
    try:
        return run_agent(config, SystemClock(), options, stop)
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
