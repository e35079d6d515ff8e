"""Retake the README's dashboard screenshot (docs/img/dashboard.png): ``make screenshot``.

Runs ``edgeproof-sim demo --keep`` (a private broker, gateway and simulated devices), waits
until the gateway's dashboard has a few minutes' worth of chart points, photographs the
whole page with headless Chromium (tests/harness/browser.py), then ends the demo with
Ctrl-C (SIGINT), which verifies and stops everything as usual.

    .venv/bin/python scripts/dashboard_screenshot.py [--out PATH] [--devices N] [--points N]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.browser import chromium, full_page_screenshot, wait_until  # noqa: E402

URL_LINE = re.compile(r"dashboard: (http://\S+)")


def _watch(stream: object, found: list[str], log: list[str]) -> None:
    assert hasattr(stream, "readline")
    for line in iter(stream.readline, ""):
        log.append(line)
        match = URL_LINE.search(line)
        if match and not found:
            found.append(match.group(1))


def _points(dashboard_url: str) -> int:
    base = dashboard_url.rsplit("/dashboard", 1)[0]
    with urllib.request.urlopen(f"{base}/v1/dashboard/summary", timeout=5) as answer:  # noqa: S310
        return len(json.load(answer)["series"]["t"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs/img/dashboard.png")
    parser.add_argument("--devices", type=int, default=5)
    parser.add_argument("--points", type=int, default=40,
                        help="chart points (one per 2 s) to wait for before the shot")
    args = parser.parse_args()
    demo = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "firmware_sim.cli", "demo", "--devices", str(args.devices),
         "--keep", "--json"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    found: list[str] = []
    log: list[str] = []
    threading.Thread(target=_watch, args=(demo.stderr, found, log), daemon=True).start()
    try:
        url = wait_until(lambda: found[0] if found else None, 120, "the demo's dashboard URL")
        wait_until(lambda: _points(url) >= args.points, 30 + 3 * args.points,
                   f"{args.points} chart points")
        with chromium(1280, 900) as browser:
            browser.get(url)
            wait_until(lambda: int(browser.find_element("tag name", "body")
                                   .get_attribute("data-polls") or 0) >= 4, 60,
                       "the page's first table refresh")
            full_page_screenshot(browser, args.out)
        print(f"wrote {args.out} from {url}")
    except (AssertionError, RuntimeError) as exc:
        print(f"error: {exc}\n{''.join(log[-10:])}", file=sys.stderr)
        return 1
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=120)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
