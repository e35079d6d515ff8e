"""Owners hear about it: a quality attestation naming this device, delivered like a consent,
shows in ``edgeproof-agent status``; one naming other devices is refused and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.quality import MAX_NOTES, QUALITY_FILE, QualityNotes
from protocol.documents import Document, sign_document
from protocol.keys import SigningKey
from protocol.quality import QualityAttestation, SensorAttestation
from tests.agent.test_policy import T0, Device

VALIDATOR = SigningKey.generate()


@pytest.fixture
def device(tmp_path: Path) -> Device:
    dev = Device(tmp_path)
    dev.inbox.quality = QualityNotes(tmp_path / QUALITY_FILE)
    return dev


def attestation(device_ids: list[bytes], state: str, reasons: tuple[str, ...] = (),
                start: int = T0, site: str = "living-room") -> Document:
    """``device_ids[0]`` gets ``state``; the others are healthy."""
    sensors = tuple(SensorAttestation(d, state, reasons, (7,)) if d == device_ids[0] else
                    SensorAttestation(d, "healthy", (), ()) for d in sorted(device_ids))
    body = QualityAttestation(site, "climate", "Cel", start, 600_000, None, sensors)
    return sign_document(body, VALIDATOR, start + 600_000)


def test_faulty_verdict_reaching_the_device_shows_in_agent_status(
        device: Device, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    device.deliver(attestation([device.device_id, b"\x00" * 16, b"\xff" * 16], "faulty",
                               ("bias",)))
    device.reading()  # the agent writes its outbox, so status has a state dir to read
    device.outbox.commit()
    assert main(["status", "--state-dir", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    [note] = status["quality"]
    assert (note["site"], note["state"], note["reasons"]) == ("living-room", "faulty", ["bias"])
    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    assert "quality       living-room climate/Cel: FAULTY (bias)" in capsys.readouterr().out


def test_older_window_does_not_replace_a_newer_verdict(device: Device, tmp_path: Path) -> None:
    ids = [device.device_id, b"\xfe" * 16, b"\xff" * 16]
    device.deliver(attestation(ids, "faulty", ("bias",), start=T0 + 600_000))
    device.deliver(attestation(ids, "healthy", start=T0))
    notes = json.loads((tmp_path / QUALITY_FILE).read_text())
    assert [n["state"] for n in notes.values()] == ["faulty"]


def test_attestation_not_naming_this_device_is_refused_and_counted(
        device: Device, tmp_path: Path) -> None:
    device.deliver(attestation([b"\xfd" * 16, b"\xfe" * 16, b"\xff" * 16], "faulty"))
    assert not (tmp_path / QUALITY_FILE).exists()
    assert device.book.status(T0, True)["refused"] == {"other_device": 1}


def test_notes_stay_bounded_keeping_the_newest_windows(device: Device, tmp_path: Path) -> None:
    ids = [device.device_id, b"\xfe" * 16, b"\xff" * 16]
    for n in range(MAX_NOTES + 5):
        device.deliver(attestation(ids, "suspect", ("noise",), start=T0 + n * 600_000,
                                   site=f"site-{n:02d}"))
    notes = json.loads((tmp_path / QUALITY_FILE).read_text())
    assert len(notes) == MAX_NOTES
    assert min(n["window_start_ms"] for n in notes.values()) == T0 + 5 * 600_000
