"""Sites of co-located sensors through the CLI (real gateway): declared with each sensor's
stated accuracy and a validator every device grants; bad declarations are one error line
and write nothing."""

from __future__ import annotations

import json
import tomllib

import pytest

from provisioning.devices_store import load_record
from provisioning.sites import SITES_DIR
from tests.provisioning.provision_live import LiveFleet

Capture = pytest.CaptureFixture[str]


@pytest.fixture(scope="module")
def room(live_fleet: LiveFleet) -> LiveFleet:
    assert live_fleet.run("recipient", "add", "hub") == 0
    for name in ("dht-a", "dht-b", "dht-c"):
        assert live_fleet.run("device", "add", name, "--recipient", "hub") == 0
    assert live_fleet.run("device", "add", "dht-private") == 0
    return live_fleet


def error_line(capsys: Capture) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_site_is_declared_with_each_sensors_accuracy(room: LiveFleet, capsys: Capture) -> None:
    capsys.readouterr()
    assert room.run("site", "add", "living-room", "--stream", "climate", "--field", "Cel",
                    "--validator", "hub", "--accuracy", "0.5", "--sensor", "dht-a",
                    "--sensor", "dht-b", "--sensor", "dht-c=0.3", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["accuracy"] for s in out["sensors"]] == [0.5, 0.5, 0.3]
    written = tomllib.loads((room.root / SITES_DIR / "living-room.toml").read_text())
    assert written["site"] == {"name": "living-room", "stream": "climate", "field": "Cel",
                               "validator": "hub"}
    assert written["sensor"][0]["device_id"] == load_record(room.config, "dht-a").device_id
    assert room.run("site", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == [
        {"name": "living-room", "stream": "climate", "field": "Cel", "sensors": 3}]


@pytest.mark.parametrize(("sensors", "message"), [
    (["dht-a", "dht-b"], "needs 3"),
    (["dht-a", "dht-b", "dht-b"], "twice"),
    (["dht-a", "dht-b", "dht-private"], "does not grant recipient hub"),
    (["dht-a", "dht-b", "no-such-device"], "no device"),
    (["dht-a", "dht-b", "dht-c=-1"], "positive accuracy"),
])
def test_bad_site_is_one_error_and_writes_nothing(room: LiveFleet, capsys: Capture,
                                                  sensors: list[str], message: str) -> None:
    capsys.readouterr()
    argv = ["site", "add", "bad-site", "--stream", "climate", "--field", "Cel",
            "--validator", "hub", "--accuracy", "0.5"]
    for s in sensors:
        argv += ["--sensor", s]
    assert room.run(*argv) == 2
    assert message in error_line(capsys)
    assert not (room.root / SITES_DIR / "bad-site.toml").exists()


def test_site_validated_under_consents_needs_no_grant_in_the_fleet(room: LiveFleet,
                                                                   capsys: Capture) -> None:
    capsys.readouterr()
    assert room.run("site", "add", "office", "--stream", "climate", "--field", "Cel",
                    "--validator", "hub", "--accuracy", "0.5", "--by-consent",
                    "--sensor", "dht-a", "--sensor", "dht-b", "--sensor", "dht-private") == 0
    written = tomllib.loads((room.root / SITES_DIR / "office.toml").read_text())
    assert [s["device"] for s in written["sensor"]] == ["dht-a", "dht-b", "dht-private"]
