"""The agent's metrics: what ``status --json`` knows, as a Prometheus text file.

Written for node_exporter's textfile collector (``[metrics] textfile``), which a Pi admin
already scrapes, next to ``status.json`` and as often (``service.status_interval_s``) and at
shutdown. Why a file and not a port (docs/AGENT.md, "Metrics"): no listening socket on the
device (nothing to authenticate, nothing another local user can slow), no HTTP thread, no
port to allocate; the figures survive the agent (a stopped agent still shows its last
counters, and ``edgeproof_agent_status_updated_seconds`` says how old they are).

prometheus_client builds the exposition (:class:`~prometheus_client.core.GaugeMetricFamily`
and friends in a private registry, ``generate_latest``); the file is replaced atomically (a
temporary file in the same directory renamed over it), so the collector never reads half a
file. It is made mode 0644 whatever the service's umask (0077 under systemd): node_exporter
runs as another user, and the file holds no secret. (prometheus_client's own
``write_to_textfile`` would leave it 0600 under that umask.)

Names follow the ``status --json`` keys: ``edgeproof_agent_<section>_<key>``, counters with
``_total`` (docs/AGENT.md, "Metrics", lists them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.uplink.uplink import UplinkState
from protocol.errors import StorageError

PREFIX = "edgeproof_agent"
OUTBOX_GAUGES = frozenset({"depth", "bytes", "last_seq", "last_receipt_ms",
                           "last_receipt_batch"})
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def _name(*parts: str) -> str:
    return _UNSAFE.sub("_", "_".join((PREFIX, *parts)))


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else None


def _table(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


def _counters(section: str, values: Mapping[str, object], what: str) -> Iterator[Metric]:
    for key, value in sorted(values.items()):
        number = _number(value)
        if number is not None:
            yield CounterMetricFamily(_name(section, key), f"{what}: {key}", value=number)


def _gauge(name: str, doc: str, value: object) -> Iterator[Metric]:
    number = _number(value)
    if number is not None:
        yield GaugeMetricFamily(_name(name), doc, value=number)


def status_metrics(doc: Mapping[str, object]) -> Iterator[Metric]:
    """The metric families of one status document (``agent.status.status_document``)."""
    agent = _table(doc.get("agent"))
    yield from _gauge("boot", "Boot counter of the device", doc.get("boot"))
    updated = _number(agent.get("updated_wall_ms"))
    if updated is not None:
        yield GaugeMetricFamily(_name("status_updated_seconds"),
                                "When the agent last wrote its status (Unix time)",
                                value=updated / 1000)
    yield from _outbox(_table(doc.get("outbox")))
    yield from _counters("credit", _table(doc.get("credit")), "Credit in micro-credits")
    yield from _counters("service", _table(agent.get("service")), "Service counter")
    yield from _uplink(_table(agent.get("uplink")))
    receipts = _table(agent.get("receipts"))
    yield from _gauge("receipts_overdue", "1 while sent records wait too long for receipts",
                      receipts.get("overdue"))
    yield from _gauge("receipts_waiting_seconds", "How long sent records have waited",
                      receipts.get("waiting_s"))
    yield from _sensors(agent.get("sensors"))
    yield from _counters("rotation", _table(_table(agent.get("rotation")).get("counters")),
                         "Key rotation counter")
    local = _table(agent.get("local_mqtt"))
    if local:
        yield from _gauge("local_mqtt_connected", "1 while the local broker is connected",
                          local.get("state") == "connected")
        yield from _gauge("local_mqtt_pending", "Entity states waiting for the local broker",
                          local.get("pending"))
        yield from _counters("local_mqtt", _table(local.get("counters")), "Local broker")
        payout = _table(local.get("payout"))
        yield from _counters("local_mqtt_payout", _table(payout.get("counters")),
                             "Payout notices fetched")
        yield from _gauge("local_mqtt_payout_epoch", "Epoch of the payout notice shown",
                          payout.get("epoch"))


def _outbox(outbox: Mapping[str, object]) -> Iterator[Metric]:
    counters: dict[str, object] = {}
    for key, value in sorted(outbox.items()):
        if key in OUTBOX_GAUGES:
            yield from _gauge(f"outbox_{key}", f"Outbox {key}", value)
        elif key == "dead_letters":
            family = GaugeMetricFamily(_name("outbox_dead_letters"),
                                       "Records the gateway rejected, kept, per reason",
                                       labels=["reason"])
            for reason, n in sorted(_table(value).items()):
                family.add_metric([reason], _number(n) or 0.0)
            yield family
        else:
            counters[key] = value
    yield from _counters("outbox", counters, "Outbox counter")


def _uplink(uplink: Mapping[str, object]) -> Iterator[Metric]:
    if not uplink:
        return
    state = GaugeMetricFamily(_name("uplink_state"), "1 for the uplink's current state",
                              labels=["state"])
    for value in UplinkState:
        state.add_metric([value.value], 1.0 if uplink.get("state") == value.value else 0.0)
    yield state
    yield from _gauge("uplink_inflight_batches", "Batches sent and awaiting their receipt",
                      uplink.get("inflight_batches"))
    yield from _counters("uplink", _table(uplink.get("counters")), "Uplink counter")


def _sensors(sensors: object) -> Iterator[Metric]:
    if not isinstance(sensors, list):
        return
    ok = CounterMetricFamily(_name("sensor_reads_ok"), "Readings taken, per stream",
                             labels=["stream", "kind"])
    errors = CounterMetricFamily(_name("sensor_errors"), "Failed reads, per stream and reason",
                                 labels=["stream", "reason"])
    for sensor in sensors:
        s = _table(sensor)
        stream, kind = str(s.get("stream")), str(s.get("kind"))
        ok.add_metric([stream, kind], _number(s.get("reads_ok")) or 0.0)
        for reason, n in sorted(_table(s.get("errors")).items()):
            errors.add_metric([stream, reason], _number(n) or 0.0)
    yield ok
    yield errors


class _StatusCollector(Collector):
    def __init__(self, doc: Mapping[str, object]) -> None:
        self.doc = doc

    def collect(self) -> Iterator[Metric]:
        yield from status_metrics(self.doc)


def write_textfile(path: Path, doc: Mapping[str, object]) -> None:
    """Atomically replace ``path`` with the metrics of ``doc``. Raises StorageError."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(doc))
    text = generate_latest(registry)
    tmp = path.with_name(f".{path.name}.tmp")  # not *.prom: the collector skips it
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # the umask took bits off
            os.write(fd, text)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"{path}: cannot write metrics ({exc.strerror})") from None
