"""What the gateway crash tests share (tests/gateway/test_gateway_crash.py, one process;
tests/gateway/test_gateway_failover.py, three): devices sending bursts, the resend of
unanswered batches, and the check that every receipt tells the truth."""

from __future__ import annotations

import itertools

from protocol.receipt import Receipt, Status, hash_prefix
from tests.gateway.gwkit import DeviceClient, TestDevice, batch_bytes

RECORDS_PER_BATCH = 10


class Publisher:
    """Devices sending bursts of batches (each device's batches in chain order)."""

    def __init__(self, client: DeviceClient, fleet: list[TestDevice]) -> None:
        self.client, self.fleet = client, fleet
        self.sent: dict[tuple[bytes, int], list[bytes]] = {}
        self._ids = itertools.count(1)

    def burst(self, batches_per_device: int) -> None:
        for _ in range(batches_per_device):
            batch_id = next(self._ids)
            for dev in self.fleet:
                records = dev.records(RECORDS_PER_BATCH)
                self.sent[(dev.device_id, batch_id)] = records
                self.client.send(dev, records, batch_id)


def answered(client: DeviceClient) -> set[tuple[bytes, int]]:
    """The (device, batch) pairs the client holds a receipt for."""
    return {(r.device_id, r.batch_id) for r in list(client.receipts)}


def resend_unanswered(client: DeviceClient, publisher: Publisher) -> int:
    """What a device does for a batch it has no receipt for (the receipt may have died);
    returns how many batches were sent again."""
    done = answered(client)
    missing = [key for key in sorted(publisher.sent) if key not in done]
    for device_id, batch_id in missing:
        client.publish(device_id, batch_bytes(publisher.sent[(device_id, batch_id)], batch_id))
    return len(missing)


def check_receipts(client: DeviceClient, publisher: Publisher, notes: set[str]) -> dict[bytes, int]:
    """Every receipt accepts (or repeats) each record at one leaf index; return the leaf
    index of every record, and add the receipts' checkpoints to ``notes``."""
    receipts: dict[tuple[bytes, int], list[Receipt]] = {}
    for receipt in list(client.receipts):
        receipts.setdefault((receipt.device_id, receipt.batch_id), []).append(receipt)
    leaf_of: dict[bytes, int] = {}
    for key, records in sorted(publisher.sent.items()):
        for receipt in receipts[key]:
            notes.add(receipt.checkpoint)
            for raw, outcome in zip(records, receipt.outcomes, strict=True):
                assert outcome.status in (Status.ACCEPTED, Status.DUPLICATE), outcome
                assert outcome.hash_prefix == hash_prefix(raw)
                assert outcome.leaf_index is not None
                assert leaf_of.setdefault(raw, outcome.leaf_index) == outcome.leaf_index
    return leaf_of
