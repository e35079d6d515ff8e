"""What the receipts topic carries cannot grow the uplink's memory without bound.

Anyone who can publish on ``edgeproof/v1/<device>/receipts`` (a buggy or compromised
gateway, or a peer the broker's ACL let in) chooses the bytes; a gateway chooses the text
of its rejection reasons. The uplink keeps per-reason state for both: bounded here.
The tests hand messages to the uplink's receive step directly (no broker needed).
"""

# ruff: noqa: SLF001

from __future__ import annotations

from pathlib import Path

from agent.clock import ManualClock
from agent.uplink import BrokerSettings, MqttConfig
from agent.uplink.uplink import _Batch
from osutil.mqtt import Received
from protocol.batch import receipts_topic
from protocol.receipt import Outcome, Receipt, Status
from tests.agent.responder import Responder
from tests.agent.uplinkkit import FAST, OutboxRig


def rig(tmp_path: Path) -> tuple[OutboxRig, Responder]:
    gateway = Responder("mqtt://127.0.0.1:1")
    device = OutboxRig(tmp_path, ManualClock())
    broker = BrokerSettings(MqttConfig("mqtt://127.0.0.1:1", "127.0.0.1", 1, False))
    device.uplink = device.make_uplink(FAST, broker, gateway.verifier_key)
    return device, gateway


def test_garbage_receipts_of_every_size_do_not_grow_the_uplink_memory(tmp_path: Path) -> None:
    """Each distinct refusal text (it names sizes and offsets) was remembered in a set that
    only a verified receipt cleared: 5000 junk messages left 5000 strings behind."""
    device, _ = rig(tmp_path)
    uplink = device.uplink
    topic = receipts_topic(device.device_id)
    try:
        for size in range(1, 5001):
            uplink._on_message(Received(topic, b"\xd2" + b"\x84" * size))
            uplink._on_message(Received(topic, b"\x00" * (70_000 + size)))
        assert uplink.counters["bad_receipts"] == 10_000
        assert len(uplink._refusals_logged) <= 64
    finally:
        device.outbox.close()
        device.state.close()


def test_gateway_chosen_refusal_reasons_do_not_grow_the_uplink_counters(
        tmp_path: Path) -> None:
    """A whole-batch refusal was counted as ``batches_refused_<the gateway's text>``: a
    gateway refusing each batch with a new text added a counter (shown in status and the
    metrics file) per batch, forever. Known reason codes keep their own counter; any other
    text is counted as ``batches_refused_other``."""
    device, gateway = rig(tmp_path)
    uplink = device.uplink
    topic = receipts_topic(device.device_id)
    try:
        for i in range(500):
            prefix = i.to_bytes(16, "big")
            uplink._inflight[i] = _Batch(i, (10_000 + i,), 1 << 60, prefix)
            reason = "too_large" if i == 0 else f"made-up reason {i} " + "x" * 200
            receipt = Receipt(device.device_id, i,
                              (Outcome(None, prefix, Status.REJECTED, reason=reason),),
                              "checkpoint", 1_700_000_000_000)
            uplink._on_message(Received(topic, receipt.sign(gateway.key,
                                                            gateway.signer.key_id)))
        refused = {k: v for k, v in uplink.counters.items() if k.startswith("batches_ref")}
        assert refused == {"batches_refused_too_large": 1, "batches_refused_other": 499}
        assert uplink._inflight == {}
    finally:
        device.outbox.close()
        device.state.close()
