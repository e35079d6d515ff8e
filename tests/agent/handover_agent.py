"""The agent, noting outside itself every reading its sensors hand over.

``python -m tests.agent.handover_agent --handover FILE -- <edgeproof-agent run args>`` (run
from the repository root) builds the agent exactly as ``edgeproof-agent run`` does
(:func:`agent.cli.build_run_config`, the same service) and wraps each sensor's ``read`` so
that a reading, once taken, is appended to FILE (``boot stream mono_ms``, one ``write`` with
O_APPEND) before the agent gets it. The kill test compares that file, which survives
``kill -9`` like any written data, with what the gateway logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from agent import cli as agent_cli
from agent.clock import SystemClock
from agent.config import AgentConfig
from agent.identity import ensure_state_dir
from agent.sensors import Reading, load_simulated_hardware
from agent.service import AgentService, ServiceOptions
from osutil.lockfile import hold_lock


def noting(read: Callable[[int], Reading], fd: int, boot: int) -> Callable[[int], Reading]:
    def read_and_note(now_mono_ms: int) -> Reading:
        reading = read(now_mono_ms)
        os.write(fd, f"{boot} {reading.stream} {reading.mono_ms}\n".encode())
        return reading
    return read_and_note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="handover-agent", description=__doc__.split("\n")[1])
    parser.add_argument("--handover", required=True, metavar="FILE")
    parser.add_argument("agent_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    run_args = agent_cli._parser().parse_args(["run", *[a for a in args.agent_args if a != "--"]])
    stop = threading.Event()

    def on_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_stop)
    config = agent_cli.build_run_config(run_args, os.environ)
    logging.basicConfig(stream=sys.stdout, level=config.log_level.upper(),
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    ensure_state_dir(config.state_dir)
    lock = hold_lock(config.state_dir, "agent")  # as edgeproof-agent run: one per state dir
    try:
        run(config, args.handover, stop)
    finally:
        lock.release()
    return 0


def run(config: AgentConfig, handover: str, stop: threading.Event) -> None:
    clock = SystemClock()
    sim = None
    if config.backend == "simulated":
        sim = load_simulated_hardware(config.sim_seed, config.state_dir, clock)
    service = AgentService(config, clock, sim=sim,
                           options=ServiceOptions(environ=dict(os.environ)))
    fd = os.open(handover, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        service.start()
        for sensor in service.sensors.sensors:
            sensor.read = noting(sensor.read, fd, service.boot)  # type: ignore[method-assign]
        service.run(stop)
    finally:
        os.close(fd)
        if sim is not None:
            sim.close()


if __name__ == "__main__":
    sys.exit(main())
