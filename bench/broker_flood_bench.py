"""Broker flood benchmark: what one enrolled device's credential can make the broker and the
gateway hold (issue 10, §2.2).

A provisioned testbed (firmware_sim.testbed: ``edgeproof-provision`` fleet, Mosquitto with
the config ``broker-config`` generates, ``python -m gateway.cli run``) and one enrolled
device, "mallory", whose own credential does all of this:

  1. baseline      VmRSS of broker and gateway after start, before any flood
  2. gateway up    one 100 MiB QoS 1 publish on its own records topic
  3. gateway down  the gateway stops (SIGTERM); 10 more 100 MiB publishes, each on a fresh
                   connection (the broker keeps queued messages for the gateway's session)
  4. full batches  still down: ``--full-batches`` publishes of the largest batch the
                   protocol allows (512 KiB), far past the per-session queue bound
  5. drain         the gateway starts again and takes what its session kept

For each step: what the publisher saw (PUBACK reason or disconnect reason), and the peak RSS
(VmHWM from /proc/<pid>/status, a high-water mark since the process started) and current RSS
of broker and gateway; ratios are peak / baseline of the same process in the same run. With
``--unbounded`` the size and queue lines are taken out of the generated mosquitto.conf (the
config before issue 10) to compare; it needs about 2 GB of memory.

Loopback only; every wait is bounded. Prints progress to stderr and ends with ONE line of
JSON on stdout. Never asserts.
Run: ``python bench/broker_flood_bench.py [--flood-mib 100] [--down-count 10]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firmware_sim.testbed import DeviceCredentials, Testbed  # noqa: E402

from protocol.batch import MAX_BATCH_BYTES, records_topic  # noqa: E402

MIB = 1024 * 1024
PUBLISH_TIMEOUT_S = 60.0
DRAIN_QUIET_S = 3.0
DRAIN_LIMIT_S = 120.0
UNBOUNDED_DROP = ("max_packet_size", "max_queued_bytes", "retain_available",
                  "use_username_as_clientid")


def log(message: str) -> None:
    print(f"[broker_flood_bench] {message}", file=sys.stderr, flush=True)


def memory_mib(pid: int) -> dict[str, float]:
    """Return {"rss": VmRSS, "peak": VmHWM} of ``pid`` in MiB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields["rss" if key == "VmRSS" else "peak"] = int(value.split()[0]) / 1024
    return fields


def publish_once(port: int, creds: DeviceCredentials, payload: bytes) -> str:
    """Connect with the device's credential, publish QoS 1, return what happened:
    "puback: <reason>", "disconnected: <reason>" or "timeout"."""
    outcome: list[str] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=creds.username,
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(creds.username, creds.password)

    def on_publish(_c: Any, _u: Any, _mid: int, rc: ReasonCode, _p: Any) -> None:
        outcome.append(f"puback: {rc}")
        done.set()

    def on_disconnect(c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        outcome.append(f"disconnected: {rc}")
        done.set()
        c.disconnect()  # no automatic reconnect (it would send the message again)

    client.on_publish, client.on_disconnect = on_publish, on_disconnect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(records_topic(bytes.fromhex(creds.device_id)), payload, qos=1)
        done.wait(PUBLISH_TIMEOUT_S)
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome[0] if outcome else "timeout"


def publish_many(port: int, creds: DeviceCredentials, payload: bytes, count: int) -> dict[str, int]:
    """Publish ``count`` QoS 1 messages on one connection; return outcomes counted."""
    outcomes: dict[str, int] = {}
    lock = threading.Condition()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=creds.username,
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(creds.username, creds.password)

    def on_publish(_c: Any, _u: Any, _mid: int, rc: ReasonCode, _p: Any) -> None:
        with lock:
            key = f"puback: {rc}"
            outcomes[key] = outcomes.get(key, 0) + 1
            lock.notify_all()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        topic = records_topic(bytes.fromhex(creds.device_id))
        for _ in range(count):
            client.publish(topic, payload, qos=1)
        with lock:
            lock.wait_for(lambda: sum(outcomes.values()) >= count, PUBLISH_TIMEOUT_S)
    finally:
        client.disconnect()
        client.loop_stop()
    return outcomes


def gateway_pid(tb: Testbed) -> int:
    assert tb.gateway.child is not None
    return tb.gateway.child.pid


def broker_pid(tb: Testbed) -> int:
    assert tb.broker.process is not None
    return tb.broker.process.pid


def wait_drained(tb: Testbed) -> float:
    """Wait until the gateway's counters stop moving for DRAIN_QUIET_S; return seconds."""
    start = time.monotonic()
    last: object = None
    quiet_since = start
    while time.monotonic() - start < DRAIN_LIMIT_S:
        stats = httpx.get(f"{tb.gateway_url}/v1/stats", timeout=10).json()
        if stats != last:
            last, quiet_since = stats, time.monotonic()
        elif time.monotonic() - quiet_since >= DRAIN_QUIET_S:
            break
        time.sleep(0.25)
    return time.monotonic() - start


def unbound(tb: Testbed) -> None:
    """Take the size and queue limits out of the generated config (the config before)."""
    conf = tb.broker_dir / "mosquitto.conf"
    lines = conf.read_text().splitlines()
    conf.write_text("\n".join(x for x in lines if not x.startswith(UNBOUNDED_DROP)) + "\n")
    tb.broker.kill()
    tb.start_broker()


def run(workdir: Path, flood_mib: int, down_count: int, full_batches: int,
        unbounded: bool) -> dict[str, Any]:
    tb = Testbed(workdir)
    result: dict[str, Any] = {"config": "unbounded" if unbounded else "generated",
                              "flood_mib": flood_mib, "down_count": down_count,
                              "full_batches": full_batches}
    try:
        tb.start()
        if unbounded:
            unbound(tb)
            tb.gateway.stop()
            tb.gateway.start()
        mallory = tb.add_device("mallory")
        port = tb.broker_port
        base_b, base_g = memory_mib(broker_pid(tb)), memory_mib(gateway_pid(tb))
        result.update(broker_baseline_rss_mib=base_b["rss"], gateway_baseline_rss_mib=base_g["rss"])
        log(f"baseline: broker {base_b['rss']:.1f} MiB, gateway {base_g['rss']:.1f} MiB")
        flood = b"\0" * (flood_mib * MIB)

        log(f"gateway up: one {flood_mib} MiB publish")
        result["up_publish"] = publish_once(port, mallory, flood)
        result["up_drain_s"] = wait_drained(tb)
        b, g = memory_mib(broker_pid(tb)), memory_mib(gateway_pid(tb))
        result.update(up_broker_peak_mib=b["peak"], up_gateway_peak_mib=g["peak"])
        log(f"  {result['up_publish']}; broker peak {b['peak']:.1f}, gateway peak {g['peak']:.1f}")

        tb.gateway.stop()
        log(f"gateway down: {down_count} x {flood_mib} MiB publishes")
        outcomes: dict[str, int] = {}
        for _ in range(down_count):
            what = publish_once(port, mallory, flood)
            outcomes[what] = outcomes.get(what, 0) + 1
        del flood
        b = memory_mib(broker_pid(tb))
        result.update(down_publishes=outcomes, down_broker_peak_mib=b["peak"],
                      down_broker_rss_mib=b["rss"])
        log(f"  {outcomes}; broker peak {b['peak']:.1f}, holds {b['rss']:.1f}")

        log(f"gateway down: {full_batches} x {MAX_BATCH_BYTES // 1024} KiB (the largest batch)")
        result["full_publishes"] = publish_many(port, mallory, b"\1" * MAX_BATCH_BYTES,
                                                full_batches)
        b = memory_mib(broker_pid(tb))
        result.update(full_broker_peak_mib=b["peak"], full_broker_rss_mib=b["rss"])
        log(f"  {result['full_publishes']}; broker peak {b['peak']:.1f}, holds {b['rss']:.1f}")

        log("gateway starts again and drains its session")
        tb.gateway.start()
        result["drain_s"] = wait_drained(tb)
        b, g = memory_mib(broker_pid(tb)), memory_mib(gateway_pid(tb))
        result.update(drain_broker_peak_mib=b["peak"], drain_gateway_peak_mib=g["peak"],
                      drain_gateway_rss_mib=g["rss"], drain_broker_rss_mib=b["rss"])
        log(f"  broker peak {b['peak']:.1f}, gateway peak {g['peak']:.1f}")
        stats = httpx.get(f"{tb.gateway_url}/v1/stats", timeout=10).json()
        result["gateway_stats"] = {k: v for k, v in stats.items()
                                   if isinstance(v, int | float | dict)}
    finally:
        tb.close()
    peaks_b = [result.get(k, 0.0) for k in ("up_broker_peak_mib", "down_broker_peak_mib",
                                            "full_broker_peak_mib", "drain_broker_peak_mib")]
    result["broker_peak_mib"] = max(peaks_b)
    result["broker_peak_ratio_to_baseline"] = result["broker_peak_mib"] / result[
        "broker_baseline_rss_mib"]
    result["gateway_peak_mib"] = max(result.get("up_gateway_peak_mib", 0.0),
                                     result.get("drain_gateway_peak_mib", 0.0))
    result["gateway_peak_ratio_to_baseline"] = result["gateway_peak_mib"] / result[
        "gateway_baseline_rss_mib"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood-mib", type=int, default=100)
    parser.add_argument("--down-count", type=int, default=10)
    parser.add_argument("--full-batches", type=int, default=256)
    parser.add_argument("--unbounded", action="store_true",
                        help="remove the size and queue limits from the generated config")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="broker-flood-bench-") as tmp:
        result = run(Path(tmp), args.flood_mib, args.down_count, args.full_batches,
                     args.unbounded)
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                      for k, v in result.items()}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
