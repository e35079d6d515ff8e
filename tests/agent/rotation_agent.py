"""The agent, killed with SIGKILL at one step of a key rotation.

``python -m tests.agent.rotation_agent --kill-at STEP -- <edgeproof-agent run args>`` (run
from the repository root) builds the agent exactly as ``edgeproof-agent run`` does
(:func:`agent.cli.run_config`, :func:`agent.run.run_agent`) and injects a rotation step hook
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

from agent.cli import run_config
from agent.clock import SystemClock
from agent.run import run_agent, setup_logging, stop_on_signals
from agent.service import ServiceOptions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rotation-agent", description=__doc__.split("\n")[1])
    parser.add_argument("--kill-at", required=True, metavar="STEP")
    parser.add_argument("agent_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    stop = threading.Event()
    stop_on_signals(stop, "rotation-agent")

    def step(name: str) -> None:
        if name == args.kill_at:
            logging.getLogger("rotation-agent").warning("SIGKILL at rotation step %s", name)
            os.kill(os.getpid(), signal.SIGKILL)

    config = run_config([a for a in args.agent_args if a != "--"], os.environ)
    setup_logging(config.log_level)
    options = ServiceOptions(environ=dict(os.environ), rotation_step=step)
    return run_agent(config, SystemClock(), options, stop)


if __name__ == "__main__":
    sys.exit(main())
