"""``edgeproof-sim demo --local-broker``: the owner's home broker, as Home Assistant sees it.

A second Mosquitto on a free loopback port stands for the broker of the owner's house (the
one Home Assistant's MQTT integration reads), with a password file: one user the devices
publish as, one the demo reads with. :meth:`HomeBroker.configure` adds ``[local_mqtt]`` to
a device's agent.toml (its password in a 0600 file beside it, ``payout_url`` the demo's
gateway so the owner's payout figures appear once an epoch is posted); a subscriber on
``homeassistant/#`` keeps every retained discovery config, and :meth:`HomeBroker.notes`
says what Home Assistant would have discovered: per device, its entities by component.
Kept apart from firmware_sim/demo.py, which only starts, configures and closes it.
"""

from __future__ import annotations

import getpass
import json
import secrets
import threading
from collections import defaultdict
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.broker import MosquittoBroker
from firmware_sim.stack import StackError
from protocol.keys import write_secret_file
from provisioning.mosquitto import hash_password

DEVICE_USER = "edgeproof-home"
READER_USER = "demo-reader"
DISCOVERY = "homeassistant/#"


class HomeBroker:
    """The owner's broker for the demo; call :meth:`start`, then :meth:`close`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._passwords = {DEVICE_USER: secrets.token_urlsafe(18),
                           READER_USER: secrets.token_urlsafe(18)}
        # Started as root, Mosquitto drops to user "mosquitto" unless told to stay: it must
        # read the 0600 password file this process writes (as firmware_sim/stack.py does).
        self.broker = MosquittoBroker(workdir / "home-broker",
                                      password_file=workdir / "home-broker.passwd",
                                      extra_config=f"user {getpass.getuser()}\n",
                                      die_with_parent=True)
        self._lock = threading.Lock()
        self._configs: dict[str, dict[str, object]] = {}  # discovery topic -> its config
        self._client: mqtt.Client | None = None

    @property
    def url(self) -> str:
        return self.broker.url

    def start(self) -> None:
        """Start the broker and the discovery reader. Raises StackError, KeyFileError or
        OSError."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        assert self.broker.password_file is not None
        write_secret_file(self.broker.password_file, "".join(
            f"{user}:{hash_password(password)}\n"
            for user, password in self._passwords.items()).encode(), overwrite=True)
        try:
            self.broker.start()
        except RuntimeError as exc:
            raise StackError(f"home broker: {exc}") from None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-home-reader",
                             protocol=mqtt.MQTTv5)
        client.username_pw_set(READER_USER, self._passwords[READER_USER])
        client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(DISCOVERY, qos=1)
        client.on_message = self._on_message
        client.connect("127.0.0.1", self.broker.port, keepalive=10)
        client.loop_start()
        self._client = client

    def configure(self, config: Path, device_name: str, gateway_url: str) -> None:
        """Add ``[local_mqtt]`` to the agent config ``config`` (after the demo rewrote it)."""
        password_file = config.with_name("local-mqtt.password")
        write_secret_file(password_file, self._passwords[DEVICE_USER].encode(), overwrite=True)
        with config.open("a", encoding="utf-8") as out:
            out.write(
                "\n# The owner's home broker (edgeproof-sim demo --local-broker, "
                "firmware_sim/demo_home.py)\n[local_mqtt]\n"
                f'broker = "{self.url}"\nusername = "{DEVICE_USER}"\n'
                f'password_file = "{password_file}"\n'
                f'client_id = "edgeproof-{device_name}"\ndevice_name = "{device_name}"\n'
                f'status_interval_s = 2\npayout_url = "{gateway_url}"\n'
                "payout_interval_s = 10\n")

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        try:
            config = json.loads(message.payload)
        except ValueError:
            return  # not a discovery config; nothing of ours
        if isinstance(config, dict):
            with self._lock:
                self._configs[message.topic] = config

    def discovered(self) -> dict[str, list[str]]:
        """Device name -> its entities as ``component/object id``, from the retained
        discovery configs seen so far."""
        out: dict[str, list[str]] = defaultdict(list)
        with self._lock:
            configs = dict(self._configs)
        for topic, config in sorted(configs.items()):
            parts = topic.split("/")
            device = config.get("device")
            name = device.get("name") if isinstance(device, dict) else None
            if len(parts) == 5 and isinstance(name, str):
                out[name].append(f"{parts[1]}/{parts[3]}")
        return dict(out)

    def notes(self) -> list[str]:
        """What Home Assistant would show, one line per device, and where to look."""
        found = self.discovered()
        lines = [f"home broker {self.url}: {sum(map(len, found.values()))} discovery configs "
                 f"from {len(found)} devices under homeassistant/ (retained)"]
        lines += [f"  {name}: {', '.join(entities)}" for name, entities in sorted(found.items())]
        return lines

    def close(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None
        self.broker.kill()
