"""The agent's metrics file for node_exporter's textfile collector: the same figures as
``status --json``, in the Prometheus text format, replaced atomically."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent.clock import ManualClock
from agent.sensors import load_simulated_hardware
from agent.service import AgentService
from agent.status import collect_status
from tests.agent.responder import RATE, Responder
from tests.agent.test_service import UNREACHABLE, config, evening


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = path.read_text(encoding="utf-8")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_file_says_what_status_json_says_and_node_exporter_can_read_it(
        tmp_path: Path) -> None:
    prom = tmp_path / "textfile" / "edgeproof.prom"
    prom.parent.mkdir()
    cfg = config(tmp_path, UNREACHABLE, Responder("mqtt://127.0.0.1:1").verifier_key,
                 sensors=[{"kind": "cpu_temp", "stream": "cpu", "interval_s": 1.0},
                          {"kind": "power_sense", "stream": "tv", "pin": 17, "interval_s": 1.0}],
                 usage={"input": "tv", "rate_micro_per_hour": RATE,
                        "checkpoint_interval_s": 1.0, "report_interval_s": 2.0},
                 metrics={"textfile": str(prom)})
    clock = ManualClock(wall_ms=int(evening() * 1000))
    sim = load_simulated_hardware(1, tmp_path, clock)
    service = AgentService(cfg, clock, sim=sim)
    old_umask = os.umask(0o077)  # as under systemd (UMask=0077)
    service.start()
    try:
        for _ in range(6):
            clock.advance(1000)
            service.step()
    finally:
        service.shutdown()  # the last status.json and the last metrics file, together
        sim.close()
        os.umask(old_umask)
    status = collect_status(tmp_path)
    got = samples(prom)
    outbox, credit, agent = status["outbox"], status["credit"], status["agent"]
    assert isinstance(outbox, dict)
    assert isinstance(credit, dict)
    assert isinstance(agent, dict)
    assert got[("edgeproof_agent_outbox_depth", ())] == outbox["depth"] > 0
    assert got[("edgeproof_agent_outbox_bytes", ())] == outbox["bytes"]
    assert got[("edgeproof_agent_outbox_dropped_total", ())] == outbox["dropped"]
    assert got[("edgeproof_agent_credit_accrued_micro_total", ())] == credit["accrued_micro"] > 0
    assert got[("edgeproof_agent_boot", ())] == status["boot"]
    for name, value in agent["service"].items():
        assert got[(f"edgeproof_agent_service_{name}_total", ())] == value
    assert got[("edgeproof_agent_service_readings_total", ())] >= 12
    assert got[("edgeproof_agent_sensor_reads_ok_total",
                (("kind", "cpu_temp"), ("stream", "cpu")))] >= 6
    assert got[("edgeproof_agent_uplink_state", (("state", agent["uplink"]["state"]),))] == 1
    assert got[("edgeproof_agent_status_updated_seconds", ())] == agent["updated_wall_ms"] / 1000
    assert [p.name for p in prom.parent.iterdir()] == ["edgeproof.prom"]  # no temp file left
    assert prom.stat().st_mode & 0o777 == 0o644  # node_exporter runs as another user
