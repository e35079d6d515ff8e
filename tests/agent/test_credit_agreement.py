"""Agent and gateway agree on credit to the micro-credit (issue 6, "Credit settlement").

A simulated TV schedule drives the power-sense line; the agent measures usage, emits
signed usage records, and the real gateway recomputes and settles them. Every figure is
compared: the agent's accrued, sent and settled credit, the gateway's settled credit for
the device and the owner's balance, and an independent recomputation from the logged
records with the one rule (protocol.record.credit_micro).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.clock import SystemClock
from agent.config import parse_config
from agent.identity import create_identity
from agent.sensors import load_simulated_hardware
from agent.service import AgentService, ServiceOptions
from agent.status import collect_status
from firmware_sim.broker import MosquittoBroker
from protocol.record import Usage, credit_micro
from protocol.signed import parse_signed_record
from tests.agent.responder import RATE, RealGateway
from tests.agent.test_service import evening
from tests.harness.waiting import within


@pytest.fixture
def gateway(tmp_path: Path, broker: MosquittoBroker) -> Iterator[RealGateway]:
    gw = RealGateway(tmp_path / "gw", broker)
    yield gw
    gw.stop()


def test_tv_usage_credit_matches_between_agent_and_gateway_to_the_micro_credit(
        tmp_path: Path, broker: MosquittoBroker, gateway: RealGateway) -> None:
    state = tmp_path / "agent"
    cfg = parse_config({
        "agent": {"state_dir": str(state)},
        "mqtt": {"broker": broker.url},
        "gateway": {"key": gateway.verifier},
        "outbox": {"commit_window_s": 0.1},
        "uplink": {"batch_interval_s": 0.1},
        "sensors": [{"kind": "power_sense", "stream": "tv", "pin": 17, "interval_s": 0.2}],
        "usage": {"input": "tv", "rate_micro_per_hour": RATE, "checkpoint_interval_s": 0.2,
                  "report_interval_s": 0.5},
        "service": {"final_flush_s": 60.0},  # a bound: the flush ends when all is receipted
    }, state)
    identity = create_identity(cfg.key_file)
    device_id = gateway.register("tv-credit", identity.key.public_key)
    clock = SystemClock()
    sim = load_simulated_hardware(3, state, clock)
    offset = evening(3) - 1.0 - time.time()  # the TV comes on about a second in
    service = AgentService(cfg, clock, sim=sim, options=ServiceOptions(
        world_wall_s=lambda: time.time() + offset))
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,))
    service.start()
    runner.start()

    def usage_with_credit_logged() -> int:
        bodies = [parse_signed_record(bytes.fromhex(r["record"]))[1].body
                  for r in gateway.records(device_id) if r["stream"] == "usage"]
        return sum(isinstance(b, Usage) and b.usage_ms > 0 for b in bodies)
    # A condition, not a fixed time: the TV came on and its usage reached the log.
    # (the assertions below say what is missing if it never happens)
    within(lambda: usage_with_credit_logged() >= 2, 60, every_s=0.1)
    stop.set()
    runner.join(30)
    sim.close()

    credit = collect_status(state)["credit"]
    assert isinstance(credit, dict)
    logged = [parse_signed_record(bytes.fromhex(r["record"]))[1]
              for r in gateway.records(device_id)]
    usage = [r.body for r in logged if isinstance(r.body, Usage)]
    assert usage, "the TV was on: usage records must have been logged"
    recomputed = sum(credit_micro(u.usage_ms, u.rate_micro_per_hour) for u in usage)
    assert recomputed > 0
    assert all(u.rate_micro_per_hour == RATE for u in usage)
    settled_at_gateway = gateway.device(device_id)["settled_micro"]
    balances = httpx.get(f"{gateway.url}/v1/balances").json()["current"]
    owner_balance = next(b["balance_micro"] for b in balances if b["owner"] == "alice")
    assert (credit["accrued_micro"], credit["sent_micro"], credit["settled_micro"],
            settled_at_gateway, owner_balance) == (recomputed,) * 5
