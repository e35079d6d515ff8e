"""The read-only dashboard: one page, its static files, and the JSON it polls.

- ``GET /dashboard`` (``GET /`` redirects there) serves ``gateway/static/dashboard.html``;
  ``GET /dashboard/assets/NAME`` serves the page's script and style and the chart library
  (uPlot, installed into ``gateway/static/vendor/`` by ``make`` from npm at a pinned
  version, checked against its integrity hash: scripts/ensure-dashboard-assets.sh). Only
  the files named in :data:`ASSETS` are served, each with its content type, ``nosniff``
  and a Content Security Policy that allows nothing from anywhere but this gateway (no
  inline script or style, no frames, no form targets), so the page loads nothing from
  the network outside.
- ``GET /v1/dashboard/summary``: what the page shows at the top and in its charts, in one
  request; computed at most once per :data:`SUMMARY_TTL_S` however many pages poll it.
- ``GET /v1/dashboard/devices`` and ``GET /v1/owners``: the device table and credit per
  owner, a page at a time (cursor: the last name or owner of the previous page).
- ``GET /v1/dashboard/quality``: logged quality attestations (PROTOCOL.md §20) decoded
  for the page, in log order, from the same paged store query as ``/v1/documents``
  (cursor: the last leaf index), each sensor with its registered device name.
- ``GET /v1/dashboard/lapses``: logged lapse notices (PROTOCOL.md §19.4) decoded the same
  way: the consent each ends, its request, ``short_at``, ``funding_block`` and the devices
  the consent named, with their registered names.

Nothing here needs the admin token and nothing here is secret: it is what the public
endpoints already reveal (device ids and keys, owners and balances, counters), arranged
for people (docs/GATEWAY.md, "Dashboard").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import FastAPI, HTTPException, Query, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from gateway.store import (
    MAX_STORED_INT,
    NO_CONTROL_CHARACTERS,
    Device,
    LastRecord,
    StoredCheckpoint,
    StoredDocument,
)
from protocol.contract import Consent, Lapse, body_of
from protocol.documents import parse_document
from protocol.quality import attestation_of

if TYPE_CHECKING:
    from gateway.api_context import ApiContext

STATIC = Path(__file__).resolve().parent / "static"
# name -> (file under STATIC, content type). Nothing else is served.
ASSETS = {
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "uPlot.min.css": ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
# On every JSON answer here: its text (owner names, sites, streams) is never sniffed as
# anything but application/json.
JSON_HEADERS = {"X-Content-Type-Options": "nosniff"}
SUMMARY_TTL_S = 1.0
RECENT_CHECKPOINTS = 10
DEFAULT_PAGE = 50
MAX_DASHBOARD_PAGE = 200
# Second-stage documents the page has panels for: where each is listed, or None while this
# gateway does not serve it.
SECTIONS: dict[str, str | None] = {"consents": "/v1/documents?type=consent",
                                   "revocations": "/v1/documents?type=revocation",
                                   "quality": "/v1/dashboard/quality",
                                   "lapses": "/v1/dashboard/lapses"}


PageLimit = Annotated[int, Query(ge=1, le=MAX_DASHBOARD_PAGE)]
# A device or owner name; no control characters (PostgreSQL text refuses NUL: a 500 before).
Cursor = Annotated[str, Query(max_length=256, pattern=NO_CONTROL_CHARACTERS)]
LeafCursor = Annotated[int, Query(ge=-1, le=MAX_STORED_INT)]


class DashboardDevice(BaseModel):
    name: str
    device_id: str
    owner: str
    status: str = Field(description="`active` or `revoked`")
    equivocated: bool = Field(description="signed two different records under one seq")
    quarantined: bool = Field(description="its messages are dropped for now after too "
                              "many bad signatures in a row")
    settled_micro: int
    registered_ms: int
    revoked_ms: int | None
    last_seq: int | None = Field(description="seq of its newest logged record")
    last_received_ms: int | None = Field(description="when the gateway received that record")


class DevicePage(BaseModel):
    devices: list[DashboardDevice]
    next_after: str | None = Field(description="pass as `after` for the next page; null "
                                   "on the last page")


class OwnerCreditOut(BaseModel):
    owner: str
    balance_micro: int = Field(description="settled credit now, micro-credits")
    devices: int


class OwnerPage(BaseModel):
    owners: list[OwnerCreditOut]
    next_after: str | None = Field(description="pass as `after` for the next page; null "
                                   "on the last page")


class SensorVerdict(BaseModel):
    device_id: str
    name: str | None = Field(description="its registered name; null if not registered here")
    state: str = Field(description="`healthy`, `suspect`, `faulty` or `recovered`")
    reasons: list[str]


class QualityRow(BaseModel):
    index: int = Field(description="leaf index in the log")
    id: str = Field(description="document id (hex)")
    signer_id: str = Field(description="the validator's signer id (hex)")
    site: str
    stream: str
    field: str
    window_start_ms: int
    window_ms: int
    consensus: str | None = Field(description="the consensus value with its unit, exact "
                                  "decimal; null if there was none")
    sensors: list[SensorVerdict]
    received_ms: int


class NamedDevice(BaseModel):
    device_id: str
    name: str | None = Field(description="its registered name; null if not registered here")


class LapseRow(BaseModel):
    index: int = Field(description="leaf index in the log")
    id: str = Field(description="document id (hex)")
    consent: str = Field(description="the document id of the consent it ends (hex)")
    request: str = Field(description="the document id of that consent's request (hex)")
    short_at: int = Field(description="the first leaf whose credit the request's funding "
                          "did not cover")
    funding_block: int = Field(description="the block up to which Funded events were read")
    chain_id: int
    distributor: str = Field(description="the distributor's address (0x hex)")
    devices: list[NamedDevice] = Field(description="the devices the consent named")
    received_ms: int


def _asset(name: str) -> tuple[bytes, str]:
    """Return an asset's bytes and content type; 404 if unknown or not installed."""
    entry = ASSETS.get(name)
    if entry is None:
        raise HTTPException(404, f"no dashboard asset {name}")
    path, media_type = entry
    try:
        return (STATIC / path).read_bytes(), media_type
    except FileNotFoundError:
        raise HTTPException(404, f"dashboard asset {name} is not installed: run make deps "
                            "(scripts/ensure-dashboard-assets.sh)") from None


class _Cached:
    """A value recomputed at most once per ``ttl_s`` (shared by every poller)."""

    def __init__(self, compute: Callable[[], dict[str, object]], ttl_s: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._compute, self._ttl, self._monotonic = compute, ttl_s, monotonic
        self._lock = threading.Lock()
        self._value: dict[str, object] | None = None
        self._at = 0.0

    def get(self) -> dict[str, object]:
        with self._lock:
            now = self._monotonic()
            if self._value is None or now - self._at >= self._ttl:
                self._value, self._at = self._compute(), now
            return self._value


def _recent_checkpoints(ctx: ApiContext) -> list[dict[str, object]]:
    latest = ctx.store.latest_checkpoint()
    if latest is None:
        return []
    found = ctx.store.checkpoints(max(0, latest.number - RECENT_CHECKPOINTS),
                                  RECENT_CHECKPOINTS)
    chain = ctx.anchor_listing(max(0, found[0].size - 1), RECENT_CHECKPOINTS) if found else None
    by_size = {int(str(a["size"])): a for a in chain or []}
    return [_checkpoint_row(c, by_size.get(c.size), local=chain is None)
            for c in reversed(found)]


def _checkpoint_row(c: StoredCheckpoint, anchor: dict[str, object] | None, *,
                    local: bool) -> dict[str, object]:
    row: dict[str, object] = {"number": c.number, "size": c.size,
                              "root_hash": c.root_hash.hex(), "issued_ms": c.issued_ms}
    if local:
        row["anchor"] = {"backend": "local"}
    elif anchor is not None:
        row["anchor"] = {k: anchor[k] for k in ("backend", "chain_id", "tx_hash",
                                                "block_number", "status", "anchored_ms")}
    else:
        row["anchor"] = None  # not (yet) confirmed on the chain
    return row


def summary(ctx: ApiContext) -> dict[str, object]:
    """Everything the top of the page and its charts show (``/v1/dashboard/summary``)."""
    stats = ctx.metrics.snapshot()
    devices = ctx.store.device_counts()
    latest = ctx.store.latest_checkpoint()
    rejections = record_rejections(stats)
    health = ctx.health()
    return {
        "gateway": {"name": ctx.verifier_key.split("+", 1)[0], "now_ms": ctx.wall_ms(),
                    "status": health.get("status"),
                    "mqtt_connected": health.get("mqtt_connected")},
        "log_size": ctx.store.size(),
        "checkpoint_size": latest.size if latest else None,
        # Checkpoints are numbered 1, 2, 3, ... without gaps (LogStore.add_checkpoint).
        "checkpoints": latest.number if latest else 0,
        "devices": {"registered": devices.registered, "revoked": devices.revoked,
                    "equivocated": devices.equivocated,
                    "quarantined": health.get("devices_quarantined", 0)},
        "records": {"accepted": stats["records_accepted"],
                    "duplicate": stats["records_duplicate"],
                    "rejected": sum(rejections.values())},
        "rejections": {**rejections, **refused_messages(stats)},
        "recent_checkpoints": _recent_checkpoints(ctx),
        "series": ctx.history.series() if ctx.history else {},
        "sections": dict(SECTIONS),
    }


def _counts(value: object) -> dict[str, int]:
    assert isinstance(value, dict)
    return {str(k): int(v) for k, v in value.items() if v}


def record_rejections(stats: dict[str, object]) -> dict[str, int]:
    """Records rejected so far per reason code (non-zero only), from metrics.snapshot()."""
    return _counts(stats["rejections"])


def refused_messages(stats: dict[str, object]) -> dict[str, int]:
    """Whole MQTT messages refused so far, as ``batch REASON`` (unreadable: no record in
    them was judged) and ``dropped REASON`` (dropped before verification, all devices),
    non-zero only, from metrics.snapshot()."""
    out = {f"batch {k}": v for k, v in _counts(stats["batches_unreadable"]).items()}
    dropped = stats["ingest_dropped"]
    assert isinstance(dropped, dict)
    for reason, by_device in dropped.items():
        total = sum(_counts(by_device).values())
        if total:
            out[f"dropped {reason}"] = total
    return out


def _device_row(d: Device, ctx: ApiContext, last: LastRecord | None) -> DashboardDevice:
    return DashboardDevice(
        name=d.name, device_id=d.device_id.hex(), owner=d.owner, status=d.status.value,
        equivocated=bool(d.flags & 1), quarantined=ctx.quarantined(d.device_id),
        settled_micro=d.settled_micro, registered_ms=d.registered_ms, revoked_ms=d.revoked_ms,
        last_seq=last.seq if last else None,
        last_received_ms=last.received_ms if last else None)


def device_page(ctx: ApiContext, after: str, limit: int) -> DevicePage:
    """One page of devices by name, with their newest record."""
    devices = ctx.store.devices(after, limit)
    last = ctx.store.last_records([d.device_id for d in devices])
    rows = [_device_row(d, ctx, last.get(d.device_id)) for d in devices]
    return DevicePage(devices=rows, next_after=rows[-1].name if len(rows) == limit else None)


def _named(device_id: bytes, names: dict[bytes, str | None], ctx: ApiContext) -> NamedDevice:
    """A device id with its registered name (looked up once per page via ``names``)."""
    if device_id not in names:
        found = ctx.store.device(device_id)
        names[device_id] = found.name if found else None
    return NamedDevice(device_id=device_id.hex(), name=names[device_id])


def quality_row(d: StoredDocument, names: dict[bytes, str | None],
                ctx: ApiContext) -> QualityRow:
    """One logged attestation decoded for the page; ``names`` caches device names."""
    doc = parse_document(d.raw)  # verified when it was logged; decoded again with size caps
    body = attestation_of(doc)
    sensors = []
    for s in body.sensors:
        sensors.append(SensorVerdict(device_id=s.device_id.hex(),
                                     name=_named(s.device_id, names, ctx).name,
                                     state=s.state, reasons=list(s.reasons)))
    c = body.consensus
    return QualityRow(index=d.index, id=d.doc_id.hex(), signer_id=doc.signer_id.hex(),
                      site=body.site, stream=body.stream, field=body.field,
                      window_start_ms=body.window_start_ms, window_ms=body.window_ms,
                      consensus=None if c is None else f"{c.value:f} {c.unit}",
                      sensors=sensors, received_ms=d.received_ms)


def quality_page(ctx: ApiContext, after: int, limit: int) -> list[QualityRow]:
    """At most ``limit`` quality attestations with index > ``after``, in log order."""
    names: dict[bytes, str | None] = {}
    return [quality_row(d, names, ctx) for d in ctx.store.documents("quality", after, limit)]


def lapse_row(d: StoredDocument, names: dict[bytes, str | None], ctx: ApiContext) -> LapseRow:
    """One logged lapse notice decoded for the page; ``names`` caches device names."""
    # Verified when it was logged; decoded again with size caps.
    body = body_of(parse_document(d.raw), Lapse)
    consent = body_of(parse_document(body.consent), Consent)
    return LapseRow(index=d.index, id=d.doc_id.hex(), consent=body.consent_id.hex(),
                    request=body.request.hex(), short_at=body.short_at,
                    funding_block=body.funding_block, chain_id=body.chain_id,
                    distributor="0x" + body.distributor.hex(),
                    devices=[_named(dev, names, ctx) for dev in consent.devices],
                    received_ms=d.received_ms)


def lapse_page(ctx: ApiContext, after: int, limit: int) -> list[LapseRow]:
    """At most ``limit`` lapse notices with index > ``after``, in log order."""
    names: dict[bytes, str | None] = {}
    return [lapse_row(d, names, ctx) for d in ctx.store.documents("lapse", after, limit)]


def add_dashboard_routes(app: FastAPI, ctx: ApiContext) -> None:
    """Serve the page, its assets and its JSON on ``app``."""
    cached = _Cached(lambda: summary(ctx), SUMMARY_TTL_S)

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/dashboard", status_code=307)

    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> Response:
        body = (STATIC / "dashboard.html").read_bytes()
        return Response(body, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/dashboard/assets/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        body, media_type = _asset(name)
        return Response(body, media_type=media_type, headers=PAGE_HEADERS)

    @app.get("/v1/dashboard/summary", tags=["dashboard"],
             summary="Counters, recent checkpoints with their anchors, and time series")
    def dashboard_summary(response: Response) -> dict[str, object]:
        response.headers.update(JSON_HEADERS)
        return cached.get()

    @app.get("/v1/dashboard/devices", response_model=DevicePage, tags=["dashboard"],
             summary="Devices by name with their state, a page at a time")
    def dashboard_devices(response: Response, after: Cursor = "",
                          limit: PageLimit = DEFAULT_PAGE) -> DevicePage:
        response.headers.update(JSON_HEADERS)
        return device_page(ctx, after, limit)

    @app.get("/v1/dashboard/quality", response_model=list[QualityRow], tags=["dashboard"],
             summary="Logged quality attestations decoded, in log order, a page at a time")
    def dashboard_quality(response: Response, after: LeafCursor = -1,
                          limit: PageLimit = DEFAULT_PAGE) -> list[QualityRow]:
        response.headers.update(JSON_HEADERS)
        return quality_page(ctx, after, limit)

    @app.get("/v1/dashboard/lapses", response_model=list[LapseRow], tags=["dashboard"],
             summary="Logged lapse notices decoded, in log order, a page at a time")
    def dashboard_lapses(response: Response, after: LeafCursor = -1,
                         limit: PageLimit = DEFAULT_PAGE) -> list[LapseRow]:
        response.headers.update(JSON_HEADERS)
        return lapse_page(ctx, after, limit)

    @app.get("/v1/owners", response_model=OwnerPage, tags=["log"],
             summary="Settled credit per owner now, by owner (UTF-8 bytes), a page at a time")
    def owners(response: Response, after: Cursor = "",
               limit: PageLimit = DEFAULT_PAGE) -> OwnerPage:
        response.headers.update(JSON_HEADERS)
        rows = [OwnerCreditOut(owner=o.owner, balance_micro=o.balance_micro, devices=o.devices)
                for o in ctx.store.owner_credits(after, limit)]
        return OwnerPage(owners=rows,
                         next_after=rows[-1].owner if len(rows) == limit else None)
