"""Quality benchmark: the validator over a simulated week of co-located sensors with faults
injected at random on a seeded schedule.

Each simulated week (``--weeks``, default 5, seeds ``--seed`` upwards, so the rates rest on
some 150 faults and 80 000 healthy sensor-windows): five sites of 3 to 5 sensors (three of
temperature, DHT22 ±0.5 °C; two of humidity, declared ±2.5 %RH) read once a minute for
``--days`` days (default 7). Each site gets faults one after another (a random sensor,
kind, start, duration and size; never two at once, so a majority is always honest), of
every kind firmware_sim knows: bias, drift, stuck, noise, spike, dropout, replay; and
every reading of every sensor is missing with probability 5 % (routine read failures).
A replaying (forged) sensor is one of four forgers, chosen at random: an exact copy 2 to
45 minutes late, an exact copy 61 to 240 minutes late, a copy 1 to 45 minutes late with
Gaussian noise of its own added (half to all of an honest unit's noise), and a live copy
(the source's value of the same minute) with such noise.
Prints one line per figure and ends with one line of JSON:

  detection_rate              faults of at least 1 °C or 5 %RH (and every stuck, dropout and
                              replay fault) whose sensor turned faulty (goal >= 0.99)
  false_flag_rate             healthy sensor-windows whose sensor was suspect or faulty
                              (goal <= 0.001); a sensor counts as healthy from the window
                              after its fault ended plus the recovery time (3 h)
  false_faulty_rate           the same, counting only faulty
  detection_delay_p95_min     from the fault's start (a drift: from when its error reached the
                              size above) to the end of the window that made it faulty
                              (goal <= 60); every fault but the hidden copies below
  forgery_caught / forgeries  replaying devices caught, of all four forgers (goal: all)
  hidden_copies_caught / hidden_copies, hidden_copy_delay_p50_min / _max_min
                              the forgers no exact match finds (noise added, or live):
                              caught, and the delay (hours: docs/QUALITY.md §3.3)
  validator_cpu_s_per_sensor_day   CPU seconds of the validator per sensor and simulated day
                              (goal <= 0.05), and its ratio to a bare baseline measured in
                              the same run (a plain mean per sensor and window)

Never asserts; run it at low priority: ``nice python bench/quality_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firmware_sim.hardware.faults import FAULT_KINDS, SensorFault
from firmware_sim.sites import SimSensor, SimSite, SiteRun
from validator import FLAGGED, SensorSpec, SiteSpec, SiteValidator, Thresholds

DAY_S = 86_400
RECOVERY_S = 3 * 3600  # faulty_clear + recovered_clear windows of 10 minutes
Readings = dict[str, list[tuple[float, float]]]


@dataclass(frozen=True)
class Quantity:
    name: str
    accuracy: float
    noise: float
    offset_sd: float
    fault_size: float  # the size a fault must reach to count: 1 °C, 5 %RH


TEMPERATURE = Quantity("temperature", 0.5, 0.1, 0.07, 1.0)
HUMIDITY = Quantity("humidity", 2.5, 0.5, 0.4, 5.0)


def random_fault(rng: random.Random, q: Quantity, sensor: str, others: list[str],
                 start_s: float, duration_s: float) -> SensorFault:
    """One fault of a random kind; sizes from the counting size to three times it."""
    kind = rng.choice(FAULT_KINDS)
    size = q.fault_size * rng.uniform(1.0, 3.0)
    end_s = start_s + duration_s
    if kind == "bias":
        return SensorFault("bias", start_s, end_s, magnitude=rng.choice((-1, 1)) * size)
    if kind == "drift":  # reaches the counting size within 0.3..1.5 days
        rate = q.fault_size / rng.uniform(0.3, 1.5)
        return SensorFault("drift", start_s, end_s, magnitude=rng.choice((-1, 1)) * rate)
    if kind == "noise":
        return SensorFault("noise", start_s, end_s, magnitude=size)
    if kind == "spike":
        return SensorFault("spike", start_s, end_s, magnitude=size, rate=0.2)
    if kind == "replay":  # a forger: exact, with noise of its own, live, or an hour+ late
        forger = rng.choice(FORGERS)
        delay = {"exact": rng.randint(2, 45), "noisy": rng.randint(1, 45), "live": 0,
                 "late": rng.randint(61, 240)}[forger]
        noise = 0.0 if forger in ("exact", "late") else q.noise * rng.uniform(0.5, 1.0)
        return SensorFault("replay", start_s, end_s, source=rng.choice(others),
                           delay_s=60 * delay, magnitude=noise)
    return SensorFault(kind, start_s, end_s)  # stuck, dropout


def make_site(index: int, rng: random.Random, days: float) -> SimSite:
    q = TEMPERATURE if index < 3 else HUMIDITY
    names = [f"s{index}-{i}" for i in range(rng.randint(3, 5))]
    faults: dict[str, list[SensorFault]] = {n: [] for n in names}
    at = rng.uniform(2, 12) * 3600
    while True:
        duration = rng.uniform(4, 30) * 3600
        if at + duration > days * DAY_S:
            break
        sensor = rng.choice(names)
        fault = random_fault(rng, q, sensor, [n for n in names if n != sensor], at, duration)
        faults[sensor].append(fault)
        at += duration + RECOVERY_S + rng.uniform(1, 8) * 3600
    sensors = tuple(SimSensor(n, q.accuracy, offset=max(-2 * q.offset_sd, min(
        2 * q.offset_sd, rng.gauss(0, q.offset_sd))), noise=q.noise, faults=tuple(faults[n]))
        for n in names)
    return SimSite(f"site{index}", "temperature" if q is TEMPERATURE else "humidity", sensors)


FORGERS = ("exact", "noisy", "live", "late")
MISSED = 0.05  # routine read failures (a DHT22's checksum errors and timeouts)


def simulate(site: SimSite, seed: int, days: float, window_s: int) -> list[Readings]:
    """Every window's readings of the site, one a minute per sensor, each missing with
    probability ``MISSED``."""
    run = SiteRun(site, seed)
    lost = random.Random(f"missed:{seed}")
    windows: list[Readings] = []
    per_window = window_s // 60
    for w in range(int(days * DAY_S) // window_s):
        readings: Readings = {s.name: [] for s in site.sensors}
        for m in range(per_window):
            t = float(w * window_s + m * 60)
            for name, value in run.read(t).items():
                if value is not None and lost.random() >= MISSED:
                    readings[name].append((t, value))
        windows.append(readings)
    return windows


def counts(fault: SensorFault, q: Quantity) -> bool:
    """Whether the fault is one the detection rate counts (big enough, or any size)."""
    if fault.kind in ("bias", "noise", "spike"):
        return abs(fault.magnitude) >= q.fault_size
    if fault.kind == "drift":
        assert fault.end_s is not None
        return abs(fault.magnitude) * (fault.end_s - fault.start_s) / DAY_S >= q.fault_size
    return True


def counted_from(fault: SensorFault, q: Quantity) -> float:
    if fault.kind == "drift":
        return fault.start_s + q.fault_size / abs(fault.magnitude) * DAY_S
    return fault.start_s


@dataclass
class Tally:
    faults: int = 0
    caught: int = 0
    forgeries: int = 0
    forgeries_caught: int = 0
    hidden: int = 0
    hidden_caught: int = 0
    healthy_windows: int = 0
    flagged: int = 0
    faulty: int = 0
    missed: list[str] | None = None
    slowest: list[tuple[float, str]] | None = None


def hidden_copy(fault: SensorFault) -> bool:
    """A forger that no exact match finds: one adding noise of its own, or a live copy."""
    return fault.kind == "replay" and (fault.magnitude > 0 or fault.delay_s == 0)


def score(site: SimSite, states: dict[str, list[str]], window_s: int, tally: Tally,
          delays: list[float], forgery_delays: list[float]) -> None:
    q = TEMPERATURE if site.quantity == "temperature" else HUMIDITY
    for sensor in site.sensors:
        history = states[sensor.name]
        for w, state in enumerate(history):
            start = w * window_s
            if any(f.start_s < start + window_s and start < (f.end_s or math.inf) + RECOVERY_S
                   for f in sensor.faults):
                continue
            tally.healthy_windows += 1
            tally.flagged += state in FLAGGED
            tally.faulty += state == "faulty"
        for fault in sensor.faults:
            if not counts(fault, q):
                continue
            assert fault.end_s is not None
            tally.faults += 1
            tally.forgeries += fault.kind == "replay"
            tally.hidden += hidden_copy(fault)
            first = int(fault.start_s // window_s)
            last = min(int(fault.end_s // window_s) + 1, len(history) - 1)
            hit = next((w for w in range(first, last + 1) if history[w] == "faulty"), None)
            if hit is None:
                assert tally.missed is not None
                tally.missed.append(f"{site.name}/{sensor.name}:{fault.kind}")
                continue
            tally.caught += 1
            tally.forgeries_caught += fault.kind == "replay"
            tally.hidden_caught += hidden_copy(fault)
            delay = max(0.0, (hit + 1) * window_s - counted_from(fault, q)) / 60
            (forgery_delays if hidden_copy(fault) else delays).append(delay)
            assert tally.slowest is not None
            tally.slowest.append((round(delay, 1), f"{site.name}/{sensor.name}:{fault.kind}"))


def baseline(windows: list[Readings]) -> None:
    """The bare minimum a consumer of the same readings does: a mean per sensor and window."""
    for readings in windows:
        for items in readings.values():
            if items:
                sum(v for _, v in items) / len(items)


def run_week(seed: int, days: float, th: Thresholds, tally: Tally, delays: list[float],
             forgery_delays: list[float]) -> tuple[float, float, float]:
    """One simulated week of five sites; returns (validator CPU s, baseline CPU s, sensor-days)."""
    rng = random.Random(seed)
    cpu = base_cpu = sensor_days = 0.0
    for index in range(5):
        site = make_site(index, rng, days)
        windows = simulate(site, seed * 100 + index, days, th.window_s)
        spec = SiteSpec(site.name, site.quantity,
                        tuple(SensorSpec(s.name, s.accuracy) for s in site.sensors))
        validator = SiteValidator(spec, th)
        states: dict[str, list[str]] = {s.name: [] for s in site.sensors}
        start = time.process_time()
        for w, readings in enumerate(windows):
            for v in validator.judge(w * th.window_s, readings).sensors:
                states[v.sensor].append(v.state)
        cpu += time.process_time() - start
        start = time.process_time()
        baseline(windows)
        base_cpu += time.process_time() - start
        sensor_days += len(site.sensors) * days
        score(site, states, th.window_s, tally, delays, forgery_delays)
        print(f"seed {seed} {site.name:<6} {site.quantity:<11} sensors={len(site.sensors)} "
              f"faults={sum(len(s.faults) for s in site.sensors)}")
    return cpu, base_cpu, sensor_days


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1)] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--weeks", type=int, default=5,
                        help="independent simulated weeks (seeds seed, seed+1, ...)")
    args = parser.parse_args()
    th = Thresholds()
    tally, delays, forgery_delays = Tally(missed=[], slowest=[]), [], []
    cpu = base_cpu = sensor_days = 0.0
    for week in range(args.weeks):
        c, b, d = run_week(args.seed + week, args.days, th, tally, delays, forgery_delays)
        cpu, base_cpu, sensor_days = cpu + c, base_cpu + b, sensor_days + d
    p95 = percentile(delays, 0.95)
    result = {
        "detection_rate": round(tally.caught / tally.faults, 4) if tally.faults else None,
        "faults": tally.faults,
        "false_flag_rate": round(tally.flagged / tally.healthy_windows, 5),
        "false_faulty_rate": round(tally.faulty / tally.healthy_windows, 5),
        "healthy_sensor_windows": tally.healthy_windows,
        "detection_delay_p95_min": round(p95, 1),
        "forgery_caught": tally.forgeries_caught,
        "forgeries": tally.forgeries,
        "hidden_copies_caught": tally.hidden_caught,
        "hidden_copies": tally.hidden,
        "hidden_copy_delay_p50_min": round(percentile(forgery_delays, 0.5), 1),
        "hidden_copy_delay_max_min": round(max(forgery_delays, default=0.0), 1),
        "validator_cpu_s_per_sensor_day": round(cpu / sensor_days, 4),
        "validator_vs_bare_mean_ratio": round(cpu / base_cpu, 1) if base_cpu else None,
        "missed": tally.missed,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "seed": args.seed,
        "weeks": args.weeks,
        "days": args.days,
    }
    assert tally.slowest is not None
    print("slowest detections (min):", sorted(tally.slowest, reverse=True)[:10])
    by_kind: dict[str, list[float]] = {}
    for delay, label in tally.slowest:
        by_kind.setdefault(label.rsplit(":", 1)[1], []).append(delay)
    print("delay p95 by kind (min):", {k: percentile(v, 0.95) for k, v in sorted(by_kind.items())})
    for key, value in result.items():
        print(f"{key:<32} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
