"""The dashboard in a real browser: headless Chromium against a running deployment.

A provisioned testbed (real Mosquitto, the gateway as its own process, real agents over
simulated hardware) feeds the gateway; Chromium loads ``/dashboard`` and the tests read
what a person sees. The numbers are compared with the JSON API once the agents have
stopped (a moving log would make "equal" a race), waiting for the page's next poll
rather than sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from provisioning.fleet import load_fleet
from tests.harness.browser import chromium, console_errors, table_rows, wait_until
from tests.harness.testbed import AgentSpec, Testbed

AGENTS = ("dash-a", "dash-b")


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    tb = Testbed(tmp_path_factory.mktemp("dash") / "tb",
                 [AgentSpec(n, usage_report_s=2.0) for n in AGENTS])
    try:
        yield tb.start()
    finally:
        tb.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as session:
        yield session


def api(tb: Testbed, path: str, **params: Any) -> Any:
    response = httpx.get(f"{tb.gateway_url}{path}", params=params, timeout=10)
    response.raise_for_status()
    return response.json()


def number(browser: WebDriver, element_id: str) -> int:
    return int(browser.find_element(By.ID, element_id).text.replace(",", ""))


def micro(text: str) -> int:
    whole, _, frac = text.replace(",", "").partition(".")
    return int(whole) * 1_000_000 + int(frac)


def table(browser: WebDriver, element_id: str) -> list[list[str]]:
    return table_rows(browser, f"#{element_id} tbody tr")


def polls(browser: WebDriver) -> int:
    return int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-polls") or 0)


def quiesce(tb: Testbed) -> dict[str, Any]:
    """Stop the agents and wait until a checkpoint covers the whole log; return /v1/stats."""
    for agent in tb.agents.values():
        agent.stop()

    def settled() -> dict[str, Any] | None:
        stats = api(tb, "/v1/stats")
        return stats if stats["checkpoint_size"] == stats["log_size"] else None
    return wait_until(settled, 30, "a checkpoint covering the log")


def wait_for_fresh_page(browser: WebDriver, expected_log_size: int) -> None:
    """Wait until the page shows ``expected_log_size`` and has refreshed its tables since."""
    wait_until(lambda: number(browser, "log-size") == expected_log_size, 30,
               f"the page to show log size {expected_log_size}")
    seen = polls(browser)
    wait_until(lambda: polls(browser) >= seen + 3, 30, "three more polls (a table refresh)")


def test_dashboard_numbers_equal_the_api_and_nothing_loads_from_elsewhere(
        testbed: Testbed, browser: WebDriver) -> None:
    browser.get(f"{testbed.gateway_url}/dashboard")
    wait_until(lambda: number(browser, "log-size") > 0, 60, "records on the page")
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#chart-rate canvas"), 30,
               "the records/s chart")
    stats = quiesce(testbed)
    wait_for_fresh_page(browser, stats["log_size"])
    summary = api(testbed, "/v1/dashboard/summary")
    stats = api(testbed, "/v1/stats")

    assert number(browser, "log-size") == stats["log_size"]
    assert number(browser, "checkpoint-size") == stats["checkpoint_size"]
    assert number(browser, "checkpoints") == summary["checkpoints"]
    assert number(browser, "records-accepted") == stats["records_accepted"]
    assert number(browser, "records-duplicate") == stats["records_duplicate"]
    assert number(browser, "records-rejected") == sum(stats["rejections"].values())
    assert number(browser, "devices-registered") == stats["devices"]
    assert number(browser, "devices-revoked") == stats["devices_revoked"]

    newest = api(testbed, "/v1/checkpoints", after=summary["checkpoints"] - 1)[0]
    first_row = table(browser, "checkpoints-table")[0]
    assert [int(first_row[0]), int(first_row[1].replace(",", ""))] == [
        newest["number"], newest["size"]]
    assert first_row[4] == "local signed chain"

    devices = api(testbed, "/v1/dashboard/devices", limit=50)["devices"]
    shown = table(browser, "devices-table")
    assert [(r[0], r[1], int(r[4].replace(",", "")), micro(r[6])) for r in shown] == [
        (d["name"], d["device_id"], d["last_seq"], d["settled_micro"]) for d in devices]
    assert {d["name"] for d in devices} >= set(AGENTS)

    owners = api(testbed, "/v1/balances")["current"]
    assert [(r[0], micro(r[2])) for r in table(browser, "owners-table")] == [
        (o["owner"], o["balance_micro"]) for o in owners]
    assert [o["owner"] for o in owners] == ["testbed"]

    loaded = browser.execute_script(  # type: ignore[no-untyped-call]
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded
    assert all(url.startswith(f"{testbed.gateway_url}/") for url in loaded)
    assert console_errors(browser) == []


def test_dashboard_goes_offline_while_the_gateway_restarts_and_recovers_by_itself(
        testbed: Testbed, browser: WebDriver) -> None:
    stats = quiesce(testbed)
    browser.get(f"{testbed.gateway_url}/dashboard")
    wait_for_fresh_page(browser, stats["log_size"])
    conn = browser.find_element(By.ID, "conn")
    assert conn.text == "live"

    testbed.gateway.stop()
    wait_until(lambda: conn.text.startswith("offline"), 30, "the page to say offline")
    testbed.gateway.start()
    wait_until(lambda: conn.text == "live", 30, "the page to say live again")

    after = api(testbed, "/v1/stats")
    wait_for_fresh_page(browser, after["log_size"])
    assert number(browser, "checkpoint-size") == after["checkpoint_size"]
    assert len(table(browser, "devices-table")) == after["devices"]
    console_errors(browser)  # fetches that failed while it was down are expected there


def test_revoked_device_shows_revoked_and_its_rejections_appear_by_reason(
        testbed: Testbed, browser: WebDriver) -> None:
    # Revoked at the gateway only (its broker login stays): what it sends next is refused.
    token = load_fleet(testbed.fleet).admin_token_file.read_text().strip()
    victim = testbed.agents["dash-b"]
    httpx.post(f"{testbed.gateway_url}/v1/devices/{victim.device_id}/revoke",
               headers={"Authorization": f"Bearer {token}"}, timeout=10).raise_for_status()
    if not victim.running:  # the earlier tests stopped it
        victim.start()
    browser.get(f"{testbed.gateway_url}/dashboard")
    wait_until(lambda: number(browser, "records-rejected") > 0, 60, "a rejection on the page")
    wait_until(lambda: "revoked_device" in browser.find_element(By.ID, "chart-rejections").text,
               30, "the revoked_device series in the rejections chart")
    stats = quiesce(testbed)
    wait_for_fresh_page(browser, stats["log_size"])
    stats = api(testbed, "/v1/stats")
    rejected = {k: v for k, v in stats["rejections"].items() if v}
    assert set(rejected) == {"revoked_device"}
    refused = {f"batch {k}": v for k, v in stats["batches_unreadable"].items() if v} | {
        f"dropped {k}": sum(d.values()) for k, d in stats["ingest_dropped"].items()
        if sum(d.values())}
    assert {r[0]: int(r[1].replace(",", "")) for r in table(browser, "rejections-table")} \
        == rejected | refused
    assert number(browser, "records-rejected") == rejected["revoked_device"]
    assert number(browser, "devices-revoked") == stats["devices_revoked"] == 1
    states = {r[0]: r[3] for r in table(browser, "devices-table")}
    assert states == {"dash-a": "active", "dash-b": "revoked"}


def test_dashboard_is_served_with_a_policy_that_forbids_loads_from_elsewhere(
        testbed: Testbed) -> None:
    page = httpx.get(f"{testbed.gateway_url}/dashboard", timeout=10)
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    for name, kind in [("dashboard.js", "text/javascript"), ("uPlot.iife.min.js",
                       "text/javascript"), ("dashboard.css", "text/css"),
                       ("uPlot.min.css", "text/css")]:
        asset = httpx.get(f"{testbed.gateway_url}/dashboard/assets/{name}", timeout=10)
        assert asset.status_code == 200
        assert asset.headers["content-type"] == f"{kind}; charset=utf-8"
        assert asset.headers["x-content-type-options"] == "nosniff"
    outside = httpx.get(f"{testbed.gateway_url}/dashboard/assets/..%2Fapi.py", timeout=10)
    assert outside.status_code == 404


def test_vendored_chart_library_is_the_pinned_version() -> None:
    vendor = Path(__file__).resolve().parents[2] / "gateway/static/vendor"
    script = (Path(__file__).resolve().parents[2] / "scripts/ensure-dashboard-assets.sh")
    pinned = [line.split("=", 1)[1] for line in script.read_text().splitlines()
              if line.startswith(("UPLOT_VERSION=", "UPLOT_INTEGRITY="))]
    assert (vendor / "uplot.version").read_text().split() == pinned
