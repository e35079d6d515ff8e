"""Mosquitto's password format, checked against the real mosquitto_passwd."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from protocol import mqtt_sizes
from protocol.batch import MAX_BATCH_BYTES, records_topic
from protocol.errors import ConfigError, TransportError, VerificationError
from protocol.receipt import MAX_SIGNED_RECEIPT_BYTES
from provisioning import mosquitto

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def real_entry(tmp_path: Path, user: str, password: str) -> str:
    if not Path(MOSQUITTO_PASSWD).exists():
        pytest.fail("mosquitto_passwd not found; install the mosquitto package")
    path = tmp_path / "pw"
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(path), user, password], check=True)
    name, _, entry = path.read_text().strip().partition(":")
    assert name == user
    return entry


def test_our_hash_has_the_parameters_mosquitto_passwd_writes(tmp_path: Path) -> None:
    theirs = real_entry(tmp_path, "alice", "s3cret").split("$")
    ours = mosquitto.hash_password("s3cret").split("$")
    assert ours[:3] == theirs[:3] == ["", "7", "101"]
    for a, b in ((ours[3], theirs[3]), (ours[4], theirs[4])):
        assert len(base64.b64decode(a)) == len(base64.b64decode(b))
    assert len(base64.b64decode(ours[3])) == mosquitto.SALT_BYTES == 12
    assert len(base64.b64decode(ours[4])) == mosquitto.HASH_BYTES == 64


def test_same_salt_gives_the_same_hash_as_mosquitto_passwd(tmp_path: Path) -> None:
    theirs = real_entry(tmp_path, "bob", "correct horse")
    salt = base64.b64decode(theirs.split("$")[3])
    assert mosquitto.hash_password("correct horse", salt) == theirs
    mosquitto.check_password(theirs, "correct horse")


def test_wrong_password_does_not_check() -> None:
    entry = mosquitto.hash_password("right", bytes(12))
    with pytest.raises(VerificationError):
        mosquitto.check_password(entry, "wrong")
    with pytest.raises(VerificationError):
        mosquitto.check_password("$6$plain", "right")


def test_user_name_that_would_break_the_password_file_is_refused() -> None:
    for bad in ("", "a:b", "a b", "a\nb", "#x"):
        with pytest.raises(ConfigError):
            mosquitto.BrokerUser(bad, "$7$x")


def test_acl_gives_each_device_only_its_own_topics() -> None:
    a, b = bytes(range(16)), bytes(range(16, 32))
    acl = mosquitto.render_acl(["gateway"], [a, b])
    block_a = acl.split(f"user {a.hex()}\n")[1].split("\n\n")[0].splitlines()
    assert block_a == [f"topic write edgeproof/v1/devices/{a.hex()}/records",
                       f"topic read edgeproof/v1/devices/{a.hex()}/receipts",
                       f"topic write edgeproof/v1/devices/{a.hex()}/policy-sync",
                       f"topic read edgeproof/v1/devices/{a.hex()}/policy"]
    assert "topic readwrite" not in acl
    assert "#" not in acl.replace("# ", "")
    gateway = acl.split("user gateway\n")[1].split("\n\n")[0].splitlines()
    assert gateway == ["topic read edgeproof/v1/devices/+/records",
                       "topic read $share/+/edgeproof/v1/devices/+/records",
                       "topic write edgeproof/v1/devices/+/receipts",
                       "topic read edgeproof/v1/devices/+/policy-sync",
                       "topic read $share/+/edgeproof/v1/devices/+/policy-sync",
                       "topic write edgeproof/v1/devices/+/policy"]
    # Only the gateway may deliver consents and revocations: no device writes a policy topic.
    assert "topic write edgeproof/v1/devices/" + a.hex() + "/policy\n" not in acl


def test_broker_config_turns_anonymous_access_off_and_keeps_queues(tmp_path: Path) -> None:
    conf = mosquitto.render_mosquitto_conf(mosquitto.ListenerSettings(
        port=1883, bind=None, data_dir=tmp_path, password_file=tmp_path / "passwd",
        acl_file=tmp_path / "acl"), fleet_name="f")
    lines = [line for line in conf.splitlines() if line and not line.startswith("#")]
    for expected in ("allow_anonymous false", "per_listener_settings false", "persistence true",
                     f"password_file {tmp_path / 'passwd'}", f"acl_file {tmp_path / 'acl'}",
                     "max_queued_messages 100000", "listener 1883"):
        assert expected in lines
    assert "allow_anonymous true" not in conf


def test_broker_config_limits_follow_the_protocols_caps(tmp_path: Path) -> None:
    settings = mosquitto.ListenerSettings(
        port=1883, bind=None, data_dir=tmp_path, password_file=tmp_path / "passwd",
        acl_file=tmp_path / "acl",
        tls=mosquitto.TlsListener(8883, tmp_path / "ca", tmp_path / "crt", tmp_path / "key"))
    lines = [line for line in mosquitto.render_mosquitto_conf(settings, fleet_name="f")
             .splitlines() if line and not line.startswith("#")]
    # Both listeners bind client ids to user names.
    assert lines.count("use_username_as_clientid true") == 2
    assert "retain_available false" in lines
    assert f"max_packet_size {mqtt_sizes.MAX_PACKET_BYTES}" in lines
    assert f"max_queued_bytes {mosquitto.DEFAULT_MAX_QUEUED_BYTES}" in lines
    # The largest batch and receipt with the longest topic fit; the limit is not far above.
    assert MAX_BATCH_BYTES + len(records_topic(bytes(16))) + 9 <= mqtt_sizes.MAX_PACKET_BYTES
    assert mqtt_sizes.MAX_RECEIPT_PACKET_BYTES > MAX_SIGNED_RECEIPT_BYTES
    assert mqtt_sizes.MAX_PACKET_BYTES < MAX_BATCH_BYTES + 4096


def test_every_service_user_gets_the_gateways_rights_and_nothing_else() -> None:
    acl = mosquitto.render_acl(["gateway", "gateway-2"], [bytes(16)])
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in acl.split("\n\n")[1:]}
    assert blocks["user gateway-2"] == blocks["user gateway"]
    assert mosquitto.render_acl("gateway", []) == mosquitto.render_acl(["gateway"], [])


def test_reload_without_control_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        mosquitto.reload_broker(mosquitto.BrokerControl())


def test_reload_command_failure_is_reported(tmp_path: Path) -> None:
    control = mosquitto.BrokerControl(reload_command="false")
    with pytest.raises(TransportError, match="exited 1"):
        mosquitto.reload_broker(control)
    ok = mosquitto.BrokerControl(reload_command="true")
    assert mosquitto.reload_broker(ok) == "ran true"
    gone = mosquitto.BrokerControl(pid_file=tmp_path / "missing.pid")
    with pytest.raises(TransportError):
        mosquitto.reload_broker(gone)
