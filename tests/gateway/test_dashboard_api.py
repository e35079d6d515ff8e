"""The dashboard's JSON: public, paged and bounded; and the in-memory history behind it."""

from __future__ import annotations

import httpx
import pytest
from selenium.webdriver.common.by import By

from gateway.history import History, Sample
from tests.gateway.contractkit import Parties, submitted
from tests.gateway.gwkit import ADMIN_TOKEN, TestDevice, batch_bytes, register
from tests.gateway.test_gateway_quality import make_room
from tests.harness.browser import chromium, console_errors, table_rows, wait_until

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_dashboard_json_needs_no_token_and_reveals_no_secret(gateway, devices) -> None:
    dev = TestDevice.create("dev-dash", 70)
    register(gateway.base_url, dev, owner="carol")
    devices.send(dev, dev.records(4), 1)
    devices.wait_for(dev.device_id, 1)
    url = gateway.base_url
    summary = httpx.get(f"{url}/v1/dashboard/summary").json()
    page = httpx.get(f"{url}/v1/dashboard/devices").json()
    owners = httpx.get(f"{url}/v1/owners").json()
    assert summary["log_size"] == 4
    assert summary["records"]["accepted"] == 4
    assert summary["sections"] == {"consents": "/v1/documents?type=consent",
                                   "revocations": "/v1/documents?type=revocation",
                                   "quality": "/v1/dashboard/quality",
                                   "lapses": "/v1/dashboard/lapses"}
    assert [(d["name"], d["owner"], d["last_seq"], d["status"]) for d in page["devices"]] == [
        ("dev-dash", "carol", 3, "active")]
    assert owners == {"owners": [{"owner": "carol", "balance_micro": 0, "devices": 1}],
                      "next_after": None}
    text = " ".join(r.text for r in [httpx.get(f"{url}/v1/dashboard/summary"),
                                     httpx.get(f"{url}/v1/dashboard/devices"),
                                     httpx.get(f"{url}/dashboard")])
    assert ADMIN_TOKEN not in text
    home = httpx.get(f"{url}/", follow_redirects=True)
    assert str(home.url) == f"{url}/dashboard"
    assert home.headers["content-type"] == "text/html; charset=utf-8"


def test_refused_records_and_unreadable_messages_both_show_by_reason(gateway, devices) -> None:
    dev = TestDevice.create("dev-noisy", 71)
    register(gateway.base_url, dev)
    devices.send(dev, dev.records(2), 1)
    devices.wait_for(dev.device_id, 1)
    devices.publish(dev.device_id, b"\xff not a batch")  # unreadable: refused whole
    stranger = TestDevice.create("dev-stranger", 72)  # signs as a device never registered
    devices.publish(dev.device_id, batch_bytes(stranger.records(1), 2))
    url = gateway.base_url

    def counted() -> dict[str, object] | None:
        summary = httpx.get(f"{url}/v1/dashboard/summary").json()
        series = summary["series"]["rejections_per_s"]
        return summary if {"batch malformed", "unknown_device"} <= set(series) else None
    summary = wait_until(counted, 30, "both reasons in the chart's series")
    stats = httpx.get(f"{url}/v1/stats").json()
    assert summary["rejections"]["batch malformed"] == stats["batches_unreadable"]["malformed"]
    assert summary["rejections"]["unknown_device"] == stats["rejections"]["unknown_device"]
    assert summary["records"]["rejected"] == sum(stats["rejections"].values())


def test_device_pages_cover_every_device_once(gateway) -> None:
    url = gateway.base_url
    names = sorted(f"dev-{i:02d}" for i in range(7))
    for i, name in enumerate(names):
        register(url, TestDevice.create(name, 100 + i))
    seen, after = [], ""
    while True:
        page = httpx.get(f"{url}/v1/dashboard/devices", params={"after": after,
                                                                "limit": 3}).json()
        seen += [d["name"] for d in page["devices"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == names
    admin = httpx.get(f"{url}/v1/devices", params={"after": "dev-04", "limit": 2},
                      headers=ADMIN).json()
    assert [d["name"] for d in admin] == ["dev-05", "dev-06"]


@pytest.mark.parametrize(("path", "params"), [
    ("/v1/dashboard/devices", {"limit": 201}),
    ("/v1/dashboard/devices", {"limit": 0}),
    ("/v1/owners", {"limit": 10_000}),
    ("/v1/owners", {"after": "x" * 257}),
])
def test_oversized_or_bad_page_requests_are_refused_in_one_line(gateway, path,
                                                                params) -> None:
    answer = httpx.get(f"{gateway.base_url}{path}", params=params)
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("query parameter ")


def test_admin_listing_refuses_a_page_over_its_cap(gateway) -> None:
    answer = httpx.get(f"{gateway.base_url}/v1/devices", params={"limit": 1001},
                       headers=ADMIN)
    assert answer.status_code == 400


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_history_keeps_only_the_newest_samples_and_rates_between_them() -> None:
    clock = Clock()
    state = {"accepted": 0, "bad": 0}

    def read() -> Sample:
        rejections = {"bad_signature": state["bad"]} if state["bad"] else {}
        return Sample(int(clock.now * 1000), state["accepted"], 0, state["accepted"], 0,
                      rejections)
    history = History(read, clock, interval_s=2.0, capacity=3)
    for step in range(5):
        clock.now = 2.0 * step
        state["accepted"] = 10 * step
        state["bad"] = step // 3
        assert history.sample_if_due()
        assert not history.sample_if_due()  # not due again at the same moment
    series = history.series()
    assert series["t"] == [4.0, 6.0, 8.0]
    assert series["log_size"] == [20, 30, 40]
    assert series["records_per_s"] == [None, 5.0, 5.0]
    assert series["rejections_per_s"] == {"bad_signature": [None, 0.5, 0.0]}


def test_dashboard_lists_logged_consents_and_revocations_as_the_api_does(
        gateway, devices) -> None:
    parties = Parties.enrol(gateway.base_url, devices, seed=81)
    request = parties.request()
    submitted(gateway.base_url, request)
    consent = parties.consent(request)
    consent_index = submitted(gateway.base_url, consent)
    revocation_index = submitted(gateway.base_url, parties.revocation(consent))
    url = gateway.base_url
    with chromium() as browser:
        browser.get(f"{url}/dashboard")

        def rows(name: str) -> list[list[str]]:
            return table_rows(browser, f"#{name}-table tbody tr")
        wait_until(lambda: rows("consents") and rows("revocations"), 30,
                   "the consent and revocation tables")
        for name, index in (("consent", consent_index), ("revocation", revocation_index)):
            listed = httpx.get(f"{url}/v1/documents", params={"type": name}).json()
            assert [d["index"] for d in listed] == [index]
            shown = rows(f"{name}s")
            assert [int(r[0].replace(",", "")) for r in shown] == [index]
            assert shown[0][1].rstrip("…") == listed[0]["id"][:16]
            assert shown[0][3].rstrip("…") == listed[0]["ref"][:16]
        assert console_errors(browser) == []


def test_dashboard_shows_logged_quality_verdicts_as_the_documents_api_lists_them(
        gateway, devices) -> None:
    url = gateway.base_url
    room = make_room(url, devices)
    doc = room.signed()
    index = submitted(url, doc)
    listed = httpx.get(f"{url}/v1/documents", params={"type": "quality"}).json()
    assert [(d["index"], d["document"]) for d in listed] == [(index, doc.raw.hex())]
    rows = httpx.get(f"{url}/v1/dashboard/quality").json()
    body = room.attestation()
    assert [(r["index"], r["id"], r["site"], r["window_start_ms"]) for r in rows] == [
        (index, listed[0]["id"], body.site, body.window_start_ms)]
    assert rows[0]["consensus"] == f"{body.consensus.value:f} {body.consensus.unit}"
    names = {d.device_id: d.name for d in room.devices}
    assert [(s["name"], s["device_id"], s["state"]) for s in rows[0]["sensors"]] == [
        (names[s.device_id], s.device_id.hex(), s.state) for s in body.sensors]
    assert httpx.get(f"{url}/v1/dashboard/quality", params={"after": index}).json() == []
    assert httpx.get(f"{url}/v1/dashboard/quality", params={"limit": 201}).status_code == 400
    with chromium() as browser:
        browser.get(f"{url}/dashboard")
        # One script reads the row: the page re-renders it on every poll, so elements found
        # first and read one by one afterwards can be stale (tests.harness.browser.table_rows).
        found = wait_until(lambda: browser.execute_script(
            "const row = document.querySelector('#quality-table tbody tr');"
            "return row && {cells: Array.from(row.querySelectorAll('td'),"
            "                                 c => c.innerText.trim()),"
            "               verdicts: Array.from(row.querySelectorAll('td.sensors div'),"
            "                                    v => [v.innerText.trim(), v.className])};"),
            30, "the quality table")
        shown = [str(c) for c in found["cells"]]
        assert int(shown[0].replace(",", "")) == index
        assert shown[2:5] == [body.site, f"{body.stream}/{body.field}", rows[0]["consensus"]]
        assert [(str(text).split(" · ")[0], cls) for text, cls in found["verdicts"]] == [
            (s["name"], f"verdict-{s['state']}") for s in rows[0]["sensors"]]
        assert "suspect" in {s["state"] for s in rows[0]["sensors"]}
        assert console_errors(browser) == []


HOSTILE_OWNER = '<img src=x onerror="document.body.dataset.pwned=1">"\'&'
RLO = "\u202e"


def test_dashboard_json_is_never_sniffed(gateway) -> None:
    url = gateway.base_url
    for path in ("/v1/dashboard/summary", "/v1/dashboard/devices", "/v1/owners",
                 "/v1/dashboard/quality", "/v1/dashboard/lapses"):
        answer = httpx.get(f"{url}{path}")
        assert answer.status_code == 200, path
        assert answer.headers["content-type"] == "application/json", path
        assert answer.headers.get("x-content-type-options") == "nosniff", path


def test_hostile_owner_names_show_as_text_and_run_nothing(gateway) -> None:
    url = gateway.base_url
    register(url, TestDevice.create("dev-html", 90), owner=HOSTILE_OWNER)
    register(url, TestDevice.create("dev-rlo", 91), owner=f"mallory{RLO}ecila")
    with chromium() as browser:
        browser.get(f"{url}/dashboard")
        wait_until(lambda: len(table_rows(browser, "#owners-table tbody tr")) == 2, 30,
                   "both owners on the page")
        owners = [r[0] for r in table_rows(browser, "#owners-table tbody tr")]
        devices = {r[0]: r[2] for r in table_rows(browser, "#devices-table tbody tr")}
        assert sorted(owners) == sorted([HOSTILE_OWNER, f"mallory{RLO}ecila"])
        assert devices["dev-html"] == HOSTILE_OWNER
        assert browser.execute_script(  # type: ignore[no-untyped-call]
            "return [document.body.dataset.pwned ?? null,"
            " document.querySelectorAll('img').length]") == [None, 0]
        assert browser.find_element(By.ID, "conn").text == "live"
        assert console_errors(browser) == []


# A quality row as /v1/dashboard/quality answers it; the page's own render functions draw it.
SENSOR = {"device_id": "ef" * 32, "name": "dht-0", "state": "healthy", "reasons": []}
QUALITY_ROW = {"index": 7, "id": "ab" * 32, "signer_id": "cd" * 32, "site": "lab",
               "stream": "climate", "field": "temperature", "window_start_ms": 1_700_000_400_000,
               "window_ms": 600_000, "consensus": "21.5 Cel", "received_ms": 1_700_000_500_000,
               "sensors": [SENSOR]}


def test_one_quality_row_with_a_far_future_window_does_not_blank_the_table(gateway) -> None:
    # A device may sign any uint64 wall clock and a validator attest a window around it:
    # past year 275760 (8.64e15 ms) toISOString() threw a RangeError before.
    bad = {**QUALITY_ROW, "index": 8, "window_start_ms": 9_000_000_000_000_000}
    with chromium() as browser:
        browser.get(f"{gateway.base_url}/dashboard")
        wait_until(lambda: browser.find_element(By.ID, "conn").text == "live", 30, "live")
        outcome = browser.execute_script(  # type: ignore[no-untyped-call]
            "try { fillTable('quality-table', arguments[0], qualityRow); }"
            "catch (err) { return String(err); }"
            "return Array.from(document.querySelectorAll('#quality-table tbody tr'),"
            "                  r => r.querySelectorAll('td')[1].innerText);",
            [bad, QUALITY_ROW])
        assert outcome == ["9,000,000,000,000,000 ms", "2023-11-14T22:20:00Z"]


def test_a_right_to_left_override_cannot_reorder_the_rest_of_a_line(gateway) -> None:
    # A stream is any text up to 64 characters (an enrolled device names it, a validator
    # attests it): U+202E in it reversed the field after it on the line, before. A sensor's
    # name (registered names are [A-Za-z0-9._-] today) is isolated from its id and state
    # the same way, should that ever be looser.
    hostile = {**QUALITY_ROW, "stream": f"clim{RLO}ate",
               "sensors": [{**SENSOR, "name": f"dht{RLO}"}]}
    with chromium() as browser:
        browser.get(f"{gateway.base_url}/dashboard")
        wait_until(lambda: browser.find_element(By.ID, "conn").text == "live", 30, "live")
        boxes = browser.execute_script(  # type: ignore[no-untyped-call]
            """
            const table = document.createElement('table');
            const tr = table.insertRow();
            qualityRow(tr, arguments[0]);
            document.body.appendChild(table);
            // the left and right edges of the first occurrence of `text` inside `el`
            function box(el, text) {
              const walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
              for (let n = walk.nextNode(); n; n = walk.nextNode()) {
                const at = n.data.indexOf(text);
                if (at < 0) continue;
                const range = document.createRange();
                range.setStart(n, at);
                range.setEnd(n, at + text.length);
                const r = range.getBoundingClientRect();
                return [r.left, r.right];
              }
              return null;
            }
            const field = tr.cells[3], verdict = tr.querySelector('td.sensors div');
            return {stream: box(field, arguments[1]), field: box(field, 'temperature'),
                    id: box(verdict, arguments[2]), state: box(verdict, 'healthy')};
            """, hostile, hostile["stream"], SENSOR["device_id"])
        # Left to right as written: the stream, then the field; a sensor's id, then its state.
        assert boxes["state"][0] >= boxes["id"][1] - 0.5, boxes
        assert boxes["field"][0] >= boxes["stream"][1] - 0.5, boxes


def test_a_long_owner_name_cannot_push_the_device_states_off_the_table(gateway) -> None:
    # An owner is up to 128 characters of anything printable; one of wide ones used to
    # stretch its table far past the panel, every row's state and credit out of sight.
    url = gateway.base_url
    owner = "\ufdfd" * 128
    register(url, TestDevice.create("dev-long", 90), owner=owner)
    with chromium() as browser:
        browser.get(f"{url}/dashboard")
        wait_until(lambda: table_rows(browser, "#owners-table tbody tr"), 30, "the owner")
        widths = browser.execute_script(  # type: ignore[no-untyped-call]
            "const panel = t => document.getElementById(t).closest('.panel');"
            "return ['devices-table', 'owners-table'].map(t => "
            "  [document.getElementById(t).scrollWidth, panel(t).clientWidth]);")
        for table_width, panel_width in widths:
            assert table_width <= panel_width, widths
        devices = table_rows(browser, "#devices-table tbody tr")
        assert devices[0][2] == owner  # cut short on screen only; the text is all there
        assert browser.execute_script(  # type: ignore[no-untyped-call]
            "return document.querySelector('#devices-table td.text:nth-child(3)').title"
        ) == owner
