"""The agent's sealed readings: the one-pass shortcut never signs with stale constants."""

from __future__ import annotations

import os

import pytest

from agent.clock import ManualClock
from agent.records import RecordFactory
from protocol.errors import MalformedRecord
from protocol.keys import Secret, SigningKey, device_id_for
from protocol.record import GENESIS_PREV, Measurement, Record, Values
from protocol.sealing import EpochKeys, seal_record
from protocol.signed import signed_bytes, verify_signed_record

VALUES = (Measurement(215, -1, "Cel"), Measurement(480, -1, "%RH"))


def _generic(factory: RecordFactory, key: SigningKey, clock: ManualClock, seq: int,
             epoch: EpochKeys, stream: str = "climate") -> bytes:
    header = Record(factory.boot, seq, GENESIS_PREV, clock.wall_ms(), clock.wall_synced(),
                    clock.mono_ms(), stream, Values(VALUES))
    return signed_bytes(seal_record(factory.device_id, header, epoch, VALUES),
                        factory.device_id, key)


def _epoch(key_seq: int) -> EpochKeys:
    return EpochKeys(key_seq, {"climate": Secret(os.urandom(32)),
                               "tv": Secret(os.urandom(32))})


def test_new_epoch_boot_clock_state_or_key_never_reuses_the_previous_sealers_bytes() -> None:
    key = SigningKey(Secret(bytes(range(32))))
    clock = ManualClock()
    factory = RecordFactory(device_id_for(key.public_key), key, 3, clock)
    first, second = _epoch(10), _epoch(20)
    for seq, epoch, stream in ((11, first, "climate"), (12, first, "tv"),
                               (21, second, "climate"), (22, first, "climate")):
        raw = factory.sign_sealed(seq, GENESIS_PREV, stream, clock.mono_ms(), epoch=epoch,
                                  values=VALUES)
        assert raw == _generic(factory, key, clock, seq, epoch, stream)
    factory.boot = 4  # another boot: its records carry the new counter
    clock.synced = False
    clock.advance(1_000)
    raw = factory.sign_sealed(23, GENESIS_PREV, "climate", clock.mono_ms(), epoch=first,
                              values=VALUES)
    assert raw == _generic(factory, key, clock, 23, first)
    rotated = SigningKey.generate()  # a key rotation: later records verify under the new key
    factory.use_key(rotated)
    raw = factory.sign_sealed(24, GENESIS_PREV, "climate", clock.mono_ms(), epoch=first,
                              values=VALUES)
    assert raw == _generic(factory, rotated, clock, 24, first)
    verify_signed_record(raw, rotated.public_key, factory.device_id)


def test_sealed_reading_outside_the_shortcut_raises_as_the_generic_path() -> None:
    key = SigningKey.generate()
    clock = ManualClock()
    factory = RecordFactory(device_id_for(key.public_key), key, 3, clock)
    with pytest.raises(ValueError, match="must precede"):
        factory.sign_sealed(10, GENESIS_PREV, "climate", 5, epoch=_epoch(10), values=VALUES)
    with pytest.raises(MalformedRecord, match="prev"):
        factory.sign_sealed(11, b"short", "climate", 5, epoch=_epoch(10), values=VALUES)
    with pytest.raises(KeyError):
        factory.sign_sealed(11, GENESIS_PREV, "nope", 5, epoch=_epoch(10), values=VALUES)
