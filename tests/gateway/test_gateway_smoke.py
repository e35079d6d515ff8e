from __future__ import annotations

from protocol.receipt import Status
from tests.gateway.gwkit import TestDevice, register


def test_honest_records_are_logged_with_receipts(gateway, devices) -> None:
    dev = TestDevice.create("dev-a", 1)
    register(gateway.base_url, dev)
    devices.send(dev, dev.records(5), batch_id=1)
    receipt = devices.wait_for(dev.device_id, 1)
    assert [o.status for o in receipt.outcomes] == [Status.ACCEPTED] * 5
    assert [o.leaf_index for o in receipt.outcomes] == [0, 1, 2, 3, 4]
