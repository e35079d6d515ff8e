"""Grants benchmark: what field- and rate-limited grants add per reading to today's path.

The agent's real write path (agent.records.RecordWriter into a real SQLite outbox, a
manual clock stepping 2 s per DHT22 reading) in four configurations, each in the same run:

  baseline           today's path: every reading sealed for one key (the owner's), no grants
  grant_1_per_min    one consent for temperature only at one reading a minute (the demo's)
  grant_every        one consent for temperature at every reading (the worst case of one)
  grants_3_every     three consents, temperature at every reading each

Per configuration: CPU µs per reading (this thread's CPU time, best of three rounds,
rounds interleaved with the baseline's) and signed bytes appended to the outbox per
reading (derived records and key epochs included). Ratios are against the baseline of
the same run. Never asserts; run it as `python bench/grants_bench.py`. Last line: JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.clock import ManualClock
from agent.grants import GrantBook
from agent.outbox import DeviceState, Outbox, OutboxSettings
from agent.records import EpochPolicy, RecordFactory, RecordWriter
from protocol.grants import AccessGrant
from protocol.keys import RecipientKey, SigningKey, device_id_for
from protocol.record import Measurement

READINGS = 3000
EVERY_MS = 2000
DAY_MS = 86_400_000
CONFIGS = {"baseline": (0, 0), "grant_1_per_min": (1, 60_000), "grant_every": (1, 0),
           "grants_3_every": (3, 0)}


class Rig:
    """A writer with its outbox and grant book in a temporary directory."""

    def __init__(self, tmp: Path, grants: int, interval_ms: int) -> None:
        self.clock = ManualClock()
        key = SigningKey.generate()
        device_id = device_id_for(key.public_key)
        settings = OutboxSettings(commit_window_ms=10**9, commit_max_records=10**6,
                                  max_bytes=1 << 30)
        self.state = DeviceState.open(tmp / "state.sqlite", self.clock.wall_ms)
        self.outbox = Outbox(tmp / "outbox.sqlite", settings, self.state, self.clock)
        factory = RecordFactory(device_id, key, self.outbox.boot, self.clock)
        self.outbox.attach(factory)
        book = GrantBook(tmp / "grants.json")
        now = self.clock.wall_ms()
        for n in range(grants):
            book.add((AccessGrant(bytes([n + 1]) * 32, RecipientKey.generate().public_key,
                                  "climate", ("Cel",), interval_ms, now - 1, now + DAY_MS),))
        self.writer = RecordWriter(factory, self.outbox,
                                   {"climate": (RecipientKey.generate().public_key,)},
                                   policy=EpochPolicy(), clock=self.clock, grants=book)
        self.writer.start_epoch()
        self.outbox.commit()
        self.start_bytes = self.outbox.bytes_used

    def run(self, readings: int) -> float:
        """Write ``readings`` readings; return the CPU seconds it took."""
        start = time.thread_time()
        for i in range(readings):
            self.clock.advance(EVERY_MS)
            self.writer.write_values("climate", (Measurement(214 + i % 50, -1, "Cel"),
                                                 Measurement(553, -1, "%RH")),
                                     self.clock.mono_ms())
        return time.thread_time() - start

    def close(self) -> None:
        self.outbox.close()
        self.state.close()


def measure() -> dict[str, dict[str, float]]:
    best = {name: float("inf") for name in CONFIGS}
    size = dict.fromkeys(CONFIGS, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(3):
            for name, (grants, interval) in CONFIGS.items():
                where = Path(tmp) / f"{name}-{round_no}"
                where.mkdir()
                rig = Rig(where, grants, interval)
                best[name] = min(best[name], rig.run(READINGS))
                size[name] = (rig.outbox.bytes_used - rig.start_bytes) / READINGS
                rig.close()
    return {name: {"cpu_us": best[name] / READINGS * 1e6, "bytes": size[name]}
            for name in CONFIGS}


def main() -> None:
    figures = measure()
    base = figures["baseline"]
    out: dict[str, float] = {}
    print(f"{'per reading (DHT22, every 2 s)':<34} {'CPU µs':>8} {'ratio':>6} {'bytes':>7} "
          f"{'ratio':>6} {'added':>6}")
    for name, f in figures.items():
        cpu_ratio, byte_ratio = f["cpu_us"] / base["cpu_us"], f["bytes"] / base["bytes"]
        print(f"{name:<34} {f['cpu_us']:>8.1f} {cpu_ratio:>6.2f} {f['bytes']:>7.1f} "
              f"{byte_ratio:>6.2f} {f['bytes'] - base['bytes']:>+6.1f}")
        out[f"{name}_cpu_us"] = round(f["cpu_us"], 1)
        out[f"{name}_bytes"] = round(f["bytes"], 1)
        out[f"{name}_cpu_ratio"] = round(cpu_ratio, 3)
        out[f"{name}_bytes_ratio"] = round(byte_ratio, 3)
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
