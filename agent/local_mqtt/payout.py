"""The owner's payout figures for Home Assistant, from the gateway's signed payout notice.

With ``[local_mqtt] payout_url`` (and ``[owner]``), :class:`PayoutWatcher` asks the gateway
``GET <payout_url>/v1/payouts/notice/<owner id>`` every ``payout_interval_s`` on its own
thread (docs/AGENT.md, "Home Assistant"). The answer's ``document`` is a ``payout_notice``
(PROTOCOL.md §19.5); it is shown only after :func:`protocol.payout_notice.verify_payout_notice`
(signed by the gateway key the device pins for receipts, for the owner it pins) and only if
its epoch is not older than the last one shown. Everything else is refused and counted by
reason; nothing is shown from an unverified answer. The watcher hands entity states to the
local publisher and nothing else: what it learns never reaches the record writer, the
outbox or anything the device signs.
"""

from __future__ import annotations

import http.client
import logging
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from decimal import Decimal

from protocol.errors import EdgeproofError
from protocol.jsontext import parse_json
from protocol.keys import signer_id
from protocol.payout_notice import PayoutNotice, verify_payout_notice

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024  # the notice is < 1 KiB; its JSON repeats it for people
TIMEOUT_S = 10.0
MICRO = Decimal(1_000_000)

Fetch = Callable[[str], tuple[int, bytes]]


def http_get(url: str) -> tuple[int, bytes]:
    """GET ``url``: (status, at most MAX_ANSWER_BYTES + 1 bytes of the body). Raises OSError,
    also for an answer that is not HTTP or is cut short (http.client.HTTPException)."""
    # The URL's scheme is http or https (checked in agent/config.py); S310 is about others.
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:  # noqa: S310
            return answer.status, answer.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except http.client.HTTPException as exc:  # bad status line, over-long header, cut short
        raise OSError(f"not an HTTP answer: {type(exc).__name__}: {exc}") from exc


def notice_states(notice: PayoutNotice) -> dict[str, str]:
    """Entity key -> state text for a verified notice (credits: micro-credits / 10^6)."""
    out = {"credit_payable": str(Decimal(notice.entitled_micro) / MICRO)}
    if notice.claimed_micro is not None and notice.claimable_micro is not None:
        out["credit_claimed"] = str(Decimal(notice.claimed_micro) / MICRO)
        out["credit_claimable"] = str(Decimal(notice.claimable_micro) / MICRO)
    return out


class PayoutWatcher:
    """Polls the gateway for the owner's payout notice and offers its figures to ``offer``."""

    def __init__(self, base_url: str, interval_s: float, *, gateway_key: bytes,
                 owner_key: bytes, offer: Callable[[Mapping[str, str]], None],
                 fetch: Fetch = http_get) -> None:
        self.url = f"{base_url.rstrip('/')}/v1/payouts/notice/{signer_id(owner_key).hex()}"
        self._interval_s = interval_s
        self._gateway_key, self._owner_key = gateway_key, owner_key
        self._offer, self._fetch = offer, fetch
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.shown: PayoutNotice | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="payout-notice", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = TIMEOUT_S + 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def alive(self) -> bool:
        """Whether the polling thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, object]:
        """A JSON-ready summary (``status --json``: ``agent.local_mqtt.payout``)."""
        with self._lock:
            shown = self.shown
            return {"url": self.url, "error": self.error, "counters": dict(self.counters),
                    "epoch": shown.epoch if shown else None,
                    "entitled_micro": shown.entitled_micro if shown else None,
                    "claimed_micro": shown.claimed_micro if shown else None}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # a poll's bug must not end the watcher
                log.exception("payout notice poll failed")
                self._refuse("internal_error", f"{type(exc).__name__}: {exc}")
            self._stop.wait(self._interval_s)

    def poll(self) -> None:
        """Ask once; show a verified, not older notice; count anything else by reason."""
        try:
            status, body = self._fetch(self.url)
        except OSError as exc:  # refused, unreachable, timed out, TLS
            self._refuse("unreachable", str(exc))
            return
        if status == 404:  # no epoch posted, no wallet bound, or no amount yet
            self._count("not_yet")
            with self._lock:
                self.error = None
            return
        if status != 200:
            self._refuse(f"http_{status}", f"the gateway answered {status}")
            return
        if len(body) > MAX_ANSWER_BYTES:
            self._refuse("too_large", f"answer over {MAX_ANSWER_BYTES} bytes")
            return
        try:
            served = parse_json(body)  # depth-capped: [[[... is refused, not RecursionError
            raw = bytes.fromhex(served["document"])
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            self._refuse("malformed", f"not a notice answer ({exc})")
            return
        try:
            notice = verify_payout_notice(raw, self._gateway_key, self._owner_key)
        except EdgeproofError as exc:
            self._refuse("unverified", str(exc))
            return
        with self._lock:
            older = self.shown is not None and notice.epoch < self.shown.epoch
        if older:
            self._refuse("older_epoch", f"epoch {notice.epoch} is older than the one shown")
            return
        with self._lock:
            self.shown, self.error = notice, None
            self.counters["accepted"] += 1
        self._offer(notice_states(notice))

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def _refuse(self, reason: str, detail: str) -> None:
        with self._lock:
            first = self.counters[reason] == 0
            self.counters[reason] += 1
            self.error = f"{reason}: {detail}"
        log.log(logging.WARNING if first else logging.DEBUG,
                "payout notice from %s refused (%s): %s; counted", self.url, reason, detail)
