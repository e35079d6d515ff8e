"""Running one agent: the single entry point behind ``edgeproof-agent run``.

The CLI, the demo's devices (``firmware_sim.demo_agent``) and the test runners
(``tests/harness/testbed_agent.py``, ``tests/agent/rotation_agent.py``) all build a config
the same way (:func:`agent.cli.run_config`) and run it through :func:`run_agent`; they
differ only in the clock and the service options they inject.
"""

from __future__ import annotations

import logging
import signal
import threading

from agent.clock import Clock
from agent.config import AgentConfig
from agent.identity import ensure_state_dir, load_identity
from agent.sensors import load_simulated_hardware
from agent.service import AgentService, ServiceOptions
from osutil.lockfile import hold_lock
from osutil.lograte import log_to_stdout
from osutil.signals import SignalRelay
from protocol.keys import load_device_key


def run_agent(config: AgentConfig, clock: Clock, options: ServiceOptions,
              stop: threading.Event, *, world_clock: Clock | None = None) -> int:
    """Run the agent described by ``config`` until ``stop`` is set; return the exit code (0).

    Checks the device key, then the state directory, before any hardware is touched (and
    before the state directory or its lock is created). With the
    ``simulated`` backend the simulated hardware runs on ``world_clock`` (default ``clock``)
    and is released at the end. Raises ConfigError for a bad config or missing simulation,
    and EdgeproofError (KeyFileError, StorageError, ...) when the agent cannot start.
    """
    # The key first, read only: a missing or unreadable key must leave no state directory
    # or lock file behind.
    load_device_key(config.key_file)
    ensure_state_dir(config.state_dir)
    # One agent per state dir: two would sign the same sequence numbers. Held until exit;
    # raises AlreadyRunning naming the other process's pid.
    lock = hold_lock(config.state_dir, "agent")
    try:
        load_identity(config.key_file)  # fail fast, before any hardware is touched
        sim = None
        if config.backend == "simulated":
            sim = load_simulated_hardware(config.sim_seed, config.state_dir,
                                          world_clock or clock,
                                          sensor_faults_file=config.sim_faults)
        service = AgentService(config, clock, sim=sim, options=options)
        try:
            service.start()
            service.run(stop)
        finally:
            if sim is not None:
                sim.close()
    finally:
        lock.release()
    return 0


def stop_on_signals(stop: threading.Event, name: str) -> SignalRelay:
    """Set ``stop`` on SIGTERM or SIGINT (logged under ``name``): a clean shutdown. Set by
    a helper thread, not the handler: the main thread may be inside ``stop.wait()`` holding
    the Event's lock when the signal lands (osutil.signals)."""
    def on_signal(signum: int) -> None:
        logging.getLogger(name).info("signal %d: stopping", signum)
        stop.set()
    return SignalRelay((signal.SIGTERM, signal.SIGINT), on_signal, f"{name}-signals").install()


def setup_logging(level: str) -> None:
    """Log to stdout at ``level`` (journald adds timestamps and the unit name)."""
    log_to_stdout(level)  # one repeated failure must not flood the journal (osutil.lograte)
