"""The agent, killed with SIGKILL at one step of a key rotation.

``python -m tests.agent.rotation_agent --kill-at STEP -- <edgeproof-agent run args>`` (run
from the repository root) builds the agent exactly as ``edgeproof-agent run`` does
(:func:`agent.cli.build_run_config`, the same service) and injects a rotation step hook
(``ServiceOptions.rotation_step``) that sends SIGKILL to its own process when the rotation
reaches ``STEP`` (see agent/rotation.py: signing, noted, announced, stashed, swapped,
accepted, rejected). Until then, and if the step never comes, it is the ordinary agent.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from agent import cli as agent_cli
from agent.clock import SystemClock
from agent.identity import ensure_state_dir
from agent.sensors import load_simulated_hardware
from agent.service import AgentService, ServiceOptions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rotation-agent", description=__doc__.split("\n")[1])
    parser.add_argument("--kill-at", required=True, metavar="STEP")
    parser.add_argument("agent_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    run_args = agent_cli._parser().parse_args(["run", *[a for a in args.agent_args if a != "--"]])
    stop = threading.Event()

    def on_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_stop)

    def step(name: str) -> None:
        if name == args.kill_at:
            logging.getLogger("rotation-agent").warning("SIGKILL at rotation step %s", name)
            os.kill(os.getpid(), signal.SIGKILL)

    config = agent_cli.build_run_config(run_args, os.environ)
    logging.basicConfig(stream=sys.stdout, level=config.log_level.upper(),
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    ensure_state_dir(config.state_dir)
    clock = SystemClock()
    sim = None
    if config.backend == "simulated":
        sim = load_simulated_hardware(config.sim_seed, config.state_dir, clock)
    service = AgentService(config, clock, sim=sim, options=ServiceOptions(
        environ=dict(os.environ), rotation_step=step))
    try:
        service.start()
        service.run(stop)
    finally:
        if sim is not None:
            sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
