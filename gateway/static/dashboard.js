// The edgeproof gateway dashboard (docs/GATEWAY.md, "Dashboard"): polls this gateway's JSON
// API and draws with uPlot. Read-only; every request goes to the page's own origin (the
// Content Security Policy allows nothing else). A failed poll marks the page offline and
// the next poll is tried as usual, so the page recovers by itself when the gateway returns.
"use strict";

const POLL_MS = 2000;
const TABLE_EVERY = 3;   // the device and owner tables refresh every third poll
const PAGE = 50;
const TIMEOUT_MS = 5000;

const $ = (id) => document.getElementById(id);
const charts = {};
let polls = 0;

function fmtInt(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

// Micro-credits as credits with six decimals, in integer arithmetic (never floats for money).
function fmtMicro(n) {
  const v = BigInt(n);
  const sign = v < 0n ? "-" : "";
  const a = v < 0n ? -v : v;
  const frac = (a % 1000000n).toString().padStart(6, "0");
  return sign + Number(a / 1000000n).toLocaleString("en-US") + "." + frac;
}

function fmtTime(ms) {
  return ms === null || ms === undefined ? "–" : new Date(ms).toLocaleTimeString("en-GB");
}

// A signed time as ISO 8601. A value JavaScript cannot hold as a date (a device's clock may
// sign any uint64; Date stops at year 275760) is shown as the number: toISOString() would
// throw and take the whole table with it.
function fmtIso(ms) {
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? `${fmtInt(ms)} ms` : d.toISOString().replace(".000Z", "Z");
}

// Text from outside (names, streams, fields) inside a line of other text: in its own
// bidi-isolated element, so a right-to-left override (U+202E) in it cannot reorder what
// follows it on the line (the id and state beside a name, the field beside a stream).
function isolated(parent, text) {
  const bdi = document.createElement("bdi");
  bdi.textContent = text;
  parent.appendChild(bdi);
  return bdi;
}

function setText(id, text) {
  const el = $(id);
  if (el.textContent !== text) el.textContent = text;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

// A name from outside (an owner, a site: up to 128 characters of anything printable): cut
// short with an ellipsis by the style sheet, whole in its tooltip, so one long name cannot
// push every row's state and credit off the side of the table.
function textCell(row, text) {
  const td = cell(row, text, "text");
  td.title = text;
  return td;
}

// An owner as a chart label (drawn on the canvas, so the style sheet cannot cut it).
function shortLabel(text) {
  const chars = Array.from(text);
  return chars.length > 24 ? chars.slice(0, 23).join("") + "…" : text;
}

function fillTable(id, rows, render) {
  const body = $(id).tBodies[0];
  const fresh = document.createElement("tbody");
  for (const item of rows) {
    let tr = document.createElement("tr");
    try {
      render(tr, item);
    } catch (err) {  // one row the page cannot draw must not blank the rest of the table
      tr = document.createElement("tr");
      cell(tr, `(row not shown: ${err})`, "unreadable").colSpan = $(id).tHead.rows[0].cells.length;
    }
    fresh.appendChild(tr);
  }
  body.replaceWith(fresh);
}

async function getJson(path) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    const resp = await fetch(path, { signal: ctl.signal, cache: "no-store" });
    if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
    return await resp.json();
  } finally {
    clearTimeout(timer);
  }
}

// --- charts (uPlot) -----------------------------------------------------------------------

const COLORS = ["#2f6fdf", "#c0362c", "#1a7f37", "#9a6700", "#8250df", "#0a7c86", "#bf3989",
                "#57606a"];

function chartWidth(el) {
  return Math.max(280, el.clientWidth || 400);
}

function drawChart(key, labels, data) {
  const el = $(key);
  if (typeof uPlot === "undefined") return;
  const shape = labels.join("\u0000");
  let chart = charts[key];
  if (chart && chart.shape !== shape) {
    chart.plot.destroy();
    chart = undefined;
  }
  if (!chart) {
    const series = [{}].concat(labels.map((label, i) => ({
      label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false })));
    const opts = { width: chartWidth(el), height: 200, series,
                   scales: { x: { time: true } }, legend: { live: false } };
    chart = { plot: new uPlot(opts, data, el), shape };
    charts[key] = chart;
  } else {
    chart.plot.setData(data);
  }
}

function drawCharts(series) {
  const t = series.t || [];
  drawChart("chart-rate", ["records/s"], [t, series.records_per_s || []]);
  drawChart("chart-log", ["log size", "checkpointed"],
            [t, series.log_size || [], series.checkpoint_size || []]);
  const reasons = Object.keys(series.rejections_per_s || {});
  const cols = reasons.map((r) => series.rejections_per_s[r]);
  if (reasons.length === 0) {
    drawChart("chart-rejections", ["none"], [t, t.map(() => 0)]);
  } else {
    drawChart("chart-rejections", reasons, [t].concat(cols));
  }
}

// Credit per owner on the table's page, as bars. Heights are floats for drawing only; the
// table beside it shows the exact integer amounts.
let ownerNames = [];

function drawOwners(rows) {
  if (typeof uPlot === "undefined") return;
  ownerNames = rows.map((o) => o.owner);
  const data = [rows.map((_, i) => i), rows.map((o) => Number(o.balance_micro) / 1e6)];
  if (charts["chart-owners"]) {
    charts["chart-owners"].plot.setData(data);
    return;
  }
  const el = $("chart-owners");
  const opts = {
    width: chartWidth(el), height: 200, legend: { show: false },
    series: [{}, { label: "settled credit", stroke: COLORS[0], fill: "rgba(47,111,223,0.35)",
                   paths: uPlot.paths.bars({ size: [0.6, 80] }), points: { show: false } }],
    scales: { x: { time: false, range: () => [-0.5, Math.max(ownerNames.length, 1) - 0.5] } },
    axes: [{ splits: () => ownerNames.map((_, i) => i),
             values: (u, splits) => splits.map((i) => shortLabel(ownerNames[i] ?? "")) },
           { label: "credits" }],
  };
  charts["chart-owners"] = { plot: new uPlot(opts, data, el), shape: "owners" };
}

window.addEventListener("resize", () => {
  for (const key of Object.keys(charts)) {
    charts[key].plot.setSize({ width: chartWidth($(key)), height: 200 });
  }
});

// --- the summary ----------------------------------------------------------------------------

function anchorText(anchor) {
  if (anchor === null) return "not on chain (yet)";
  if (anchor.backend === "local") return "local signed chain";
  return `${anchor.backend} chain ${anchor.chain_id}, block ${anchor.block_number}, tx ${anchor.tx_hash}`;
}

function renderSummary(s) {
  setText("gw-name", s.gateway.name);
  setText("log-size", fmtInt(s.log_size));
  setText("checkpoint-size", fmtInt(s.checkpoint_size));
  setText("checkpoints", fmtInt(s.checkpoints));
  setText("records-accepted", fmtInt(s.records.accepted));
  setText("records-duplicate", fmtInt(s.records.duplicate));
  setText("records-rejected", fmtInt(s.records.rejected));
  setText("devices-registered", fmtInt(s.devices.registered));
  setText("devices-revoked", fmtInt(s.devices.revoked));
  setText("devices-equivocated", fmtInt(s.devices.equivocated));
  setText("devices-quarantined", fmtInt(s.devices.quarantined));
  const rates = (s.series.records_per_s || []).filter((v) => v !== null);
  setText("rate", rates.length ? rates[rates.length - 1].toFixed(1) : "–");
  fillTable("checkpoints-table", s.recent_checkpoints, (tr, c) => {
    cell(tr, String(c.number), "num");
    cell(tr, fmtInt(c.size), "num");
    cell(tr, c.root_hash.slice(0, 16) + "…", "id").title = c.root_hash;
    cell(tr, fmtTime(c.issued_ms));
    cell(tr, anchorText(c.anchor), c.anchor && c.anchor.tx_hash ? "id" : "");
  });
  const reasons = Object.entries(s.rejections).sort((a, b) => b[1] - a[1]);
  fillTable("rejections-table", reasons, (tr, [reason, n]) => {
    cell(tr, reason);
    cell(tr, fmtInt(n), "num");
  });
  if (reasons.length === 0) {
    fillTable("rejections-table", [null], (tr) => { cell(tr, "none"); cell(tr, "0", "num"); });
  }
  drawCharts(s.series);
}

// --- paged tables ---------------------------------------------------------------------------

class Pager {
  constructor(name, path, key, render, draw) {
    const first = key ? "" : -1;  // /v1/documents: indices after -1, i.e. from the first leaf
    Object.assign(this, { name, path, key, render, draw, cursors: [first], next: null });
    $(`${name}-prev`).addEventListener("click", () => this.move(-1));
    $(`${name}-next`).addEventListener("click", () => this.move(1));
  }

  move(step) {
    if (step > 0 && this.next === null) return;
    if (step > 0) this.cursors.push(this.next);
    else if (this.cursors.length > 1) this.cursors.pop();
    this.load().catch(offline);
  }

  async load() {
    const after = this.cursors[this.cursors.length - 1];
    const sep = this.path.includes("?") ? "&" : "?";
    const page = await getJson(`${this.path}${sep}limit=${PAGE}&after=${encodeURIComponent(after)}`);
    // A cursor page ({rows, next_after}), or a plain list in log order (/v1/documents).
    const rows = this.key ? page[this.key] : page;
    this.next = this.key ? page.next_after
      : (rows.length === PAGE ? rows[rows.length - 1].index : null);
    fillTable(`${this.name}-table`, rows, this.render);
    if (this.draw) this.draw(rows);
    const first = (this.cursors.length - 1) * PAGE;
    setText(`${this.name}-page`, rows.length
      ? `(${first + 1}–${first + rows.length}${this.next === null ? "" : ", more"})` : "(none)");
    $(`${this.name}-prev`).disabled = this.cursors.length === 1;
    $(`${this.name}-next`).disabled = this.next === null;
  }
}

function deviceState(d) {
  if (d.quarantined) return "quarantined";
  if (d.equivocated) return "equivocated";
  return d.status;
}

const devices = new Pager("devices", "/v1/dashboard/devices", "devices", (tr, d) => {
  textCell(tr, d.name);
  cell(tr, d.device_id, "id");
  textCell(tr, d.owner);
  const state = deviceState(d);
  cell(tr, state, `state-${state}`);
  cell(tr, d.last_seq === null ? "–" : fmtInt(d.last_seq), "num");
  cell(tr, fmtTime(d.last_received_ms));
  cell(tr, fmtMicro(d.settled_micro), "num");
});

const owners = new Pager("owners", "/v1/owners", "owners", (tr, o) => {
  textCell(tr, o.owner);
  cell(tr, fmtInt(o.devices), "num");
  cell(tr, fmtMicro(o.balance_micro), "num");
}, drawOwners);

// Consents and revocations (signed documents logged as leaves, GET /v1/documents), in log
// order. A gateway without that endpoint answers 404: the panel then says so.
function documentRow(tr, d) {
  cell(tr, fmtInt(d.index), "num");
  cell(tr, d.id.slice(0, 16) + "…", "id").title = d.id;
  cell(tr, (d.signer_id || d.signer).slice(0, 16) + "…", "id").title = d.signer;
  cell(tr, d.ref ? d.ref.slice(0, 16) + "…" : "–", "id");
  cell(tr, fmtTime(d.received_ms));
}

const consents = new Pager("consents", "/v1/documents?type=consent", null, documentRow);
const revocations = new Pager("revocations", "/v1/documents?type=revocation", null,
                              documentRow);

// Quality attestations (GET /v1/dashboard/quality, decoded by the gateway), in log order;
// per sensor its name, id and state, suspect and faulty ones highlighted.
function qualityRow(tr, q) {
  cell(tr, fmtInt(q.index), "num");
  cell(tr, fmtIso(q.window_start_ms));
  textCell(tr, q.site);
  const field = textCell(tr, "");
  field.title = `\u2068${q.stream}\u2069/\u2068${q.field}\u2069`;  // isolated here too
  isolated(field, q.stream);
  field.appendChild(document.createTextNode("/"));
  isolated(field, q.field);
  cell(tr, q.consensus === null ? "–" : q.consensus, "num");
  const td = cell(tr, "", "sensors");
  for (const s of q.sensors) {
    const div = document.createElement("div");
    const why = s.reasons.length ? ` (${s.reasons.join(", ")})` : "";
    isolated(div, s.name ?? "?");
    div.appendChild(document.createTextNode(` · ${s.device_id}: ${s.state}${why}`));
    div.className = `verdict-${s.state}`;
    td.appendChild(div);
  }
}

const quality = new Pager("quality", "/v1/dashboard/quality", null, qualityRow);

// Lapse notices (GET /v1/dashboard/lapses, decoded by the gateway), in log order: the
// consent each ends because its request's funding fell short, and the devices it named.
function lapseRow(tr, l) {
  cell(tr, fmtInt(l.index), "num");
  cell(tr, l.id.slice(0, 16) + "…", "id").title = l.id;
  cell(tr, l.consent.slice(0, 16) + "…", "id").title = l.consent;
  cell(tr, l.request.slice(0, 16) + "…", "id").title = l.request;
  cell(tr, fmtInt(l.short_at), "num");
  cell(tr, fmtInt(l.funding_block), "num");
  const td = cell(tr, "", "sensors");
  for (const d of l.devices) {
    const div = document.createElement("div");
    isolated(div, d.name ?? "?");
    div.appendChild(document.createTextNode(` · ${d.device_id}`));
    td.appendChild(div);
  }
  cell(tr, fmtTime(l.received_ms));
}

const lapses = new Pager("lapses", "/v1/dashboard/lapses", null, lapseRow);

async function loadDocuments(pager) {
  try {
    await pager.load();
  } catch (err) {
    if (!String(err).includes("HTTP 404")) throw err;
    setText(`${pager.name}-page`, "(not served by this gateway)");
  }
}

// --- the loop ---------------------------------------------------------------------------------

function online() {
  const conn = $("conn");
  conn.textContent = "live";
  conn.className = "pill live";
  setText("updated", `updated ${new Date().toLocaleTimeString("en-GB")}`);
  document.body.dataset.polls = String(++polls);
}

function offline(err) {
  const conn = $("conn");
  conn.textContent = "offline, retrying";
  conn.className = "pill offline";
  conn.title = String(err);
}

async function poll() {
  try {
    const summary = await getJson("/v1/dashboard/summary");
    renderSummary(summary);
    if (polls % TABLE_EVERY === 0) {
      await Promise.all([devices.load(), owners.load(), loadDocuments(consents),
                         loadDocuments(revocations), loadDocuments(quality),
                         loadDocuments(lapses)]);
    }
    online();
  } catch (err) {
    offline(err);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

if (typeof uPlot === "undefined") {
  const notice = $("notice");
  notice.textContent = "The chart library is not installed on this gateway "
    + "(make deps installs it); the numbers below are live, the charts are missing.";
  notice.hidden = false;
}
poll();
