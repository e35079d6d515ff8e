"""GET /v1/owners/{owner_key}/devices: public, so it reads one owner's devices a page at a
time from an index (LogStore.owner_devices), never the whole registry; and the owner's
client follows the pages."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.store import LogStore
from tests.gateway.conftest import RunningGateway
from tests.stores import STORE_KINDS, store_factory_for
from verifier import client as verifier_client
from verifier.client import DocumentClient

OWNER, OTHER = b"o" * 32, b"p" * 32


def register(store: LogStore, names: list[str], owner_key: bytes | None, first: int) -> None:
    for i, name in enumerate(names, start=first):
        store.register_device(name, i.to_bytes(32, "big"), "olga", 0, 1, owner_key=owner_key,
                              owner_sealing_key=None if owner_key is None else b"z" * 32)


def count_calls(store: LogStore, monkeypatch: pytest.MonkeyPatch,
                *names: str) -> Counter[str]:
    """Count the calls to the store's methods ``names`` from now on (and pass them on)."""
    calls: Counter[str] = Counter()
    for name in names:
        method = getattr(store, name)

        def counted(*args: Any, _name: str = name, _method: Any = method, **kw: Any) -> Any:
            calls[_name] += 1
            return _method(*args, **kw)
        monkeypatch.setattr(store, name, counted)
    return calls


def test_owner_devices_are_that_owners_only_a_page_at_a_time_without_the_registry(
        gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    store = gateway.service.store
    mine = ["Zed", "alpha", "dev-1", "dev-2", "zed"]
    register(store, mine, OWNER, 0)
    register(store, [f"other-{i}" for i in range(30)], OTHER, 100)
    register(store, ["legacy"], None, 200)
    calls = count_calls(store, monkeypatch, "devices", "owner_devices")
    url = f"{gateway.base_url}/v1/owners/{OWNER.hex()}/devices"
    whole = httpx.get(url)
    assert whole.status_code == 200
    assert [d["name"] for d in whole.json()] == mine  # by bytes; the default page is the cap
    assert set(whole.json()[0]) == {"device_id", "name", "status"}
    seen: list[str] = []
    after = ""
    while page := httpx.get(url, params={"after": after, "limit": 2}).json():
        assert len(page) <= 2
        seen += [d["name"] for d in page]
        after = page[-1]["name"]
    assert seen == mine
    assert httpx.get(f"{gateway.base_url}/v1/owners/{(b'q' * 32).hex()}/devices").json() == []
    # One index range per request: the registry listing is never read.
    assert calls == Counter({"owner_devices": 1 + 4 + 1})


def test_owner_devices_refuse_a_bad_cursor_limit_or_key_with_a_400(
        gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_calls(gateway.service.store, monkeypatch, "devices", "owner_devices")
    url = f"{gateway.base_url}/v1/owners/{OWNER.hex()}/devices"
    for query in ({"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"after": "n" * 65},
                  {"after": "dev\x00"}, {"after": "dev\n1"}, {"after": "zoë"}):
        response = httpx.get(url, params=query)
        assert response.status_code == 400, (query, response.text)
        assert response.json()["detail"].startswith("query parameter "), query
    for key in ("not-a-key", OWNER.hex()[:-2], OWNER.hex().upper()):
        response = httpx.get(f"{gateway.base_url}/v1/owners/{key}/devices")
        assert response.status_code == 400, (key, response.text)
    assert not calls


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_store_from_before_the_owner_index_gets_it_at_open(
        request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    factory = store_factory_for(request, kind, tmp_path)
    factory.open().close()
    factory.run("DROP INDEX devices_by_owner_key")
    if kind == "sqlite":  # the oldest stores have no owner key columns at all
        assert factory.sqlite_path is not None
        with sqlite3.connect(factory.sqlite_path) as conn:
            conn.execute("ALTER TABLE devices DROP COLUMN owner_key")
            conn.execute("ALTER TABLE devices DROP COLUMN owner_sealing_key")
    store = factory.open()
    try:
        register(store, ["b", "a"], OWNER, 0)
        assert [d.name for d in store.owner_devices(OWNER)] == ["a", "b"]
    finally:
        store.close()
    if kind == "sqlite":
        plan = factory.run("EXPLAIN QUERY PLAN SELECT device_id FROM devices WHERE "
                           "owner_key = ? AND name > ? ORDER BY name LIMIT ?", (OWNER, "", 5))
        assert "devices_by_owner_key" in " ".join(str(row[-1]) for row in plan)
    else:
        assert factory.run("SELECT indexname FROM pg_indexes WHERE tablename = 'devices' "
                           "AND indexname = 'devices_by_owner_key'") == [
            ("devices_by_owner_key",)]


def test_the_owner_client_follows_the_pages(gateway: RunningGateway,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = gateway.service.store
    names = [f"dev-{i}" for i in range(5)]
    register(store, names, OWNER, 0)
    register(store, ["other"], OTHER, 50)
    monkeypatch.setattr(verifier_client, "OWNER_DEVICES_PAGE", 2)
    found = DocumentClient(gateway.base_url).owner_devices(OWNER)
    assert [(name, status) for _, name, status in found] == [(n, "active") for n in names]
    assert [device_id for device_id, _, _ in found] == [
        d.device_id for d in store.owner_devices(OWNER)]
