// edgeml fleet dashboard: reads the token-guarded /v1 API with the token kept in sessionStorage and
// renders tables and inline SVG charts. No framework and no CDN: this file is the whole front end.
"use strict";

const TOKEN_KEY = "edgeml.fleet.token";
const PAGES = ["devices", "rollouts", "models", "captures", "audit"];
let apiPaths = null; // the server's OpenAPI paths: lets the page skip areas this server does not have yet

class HttpError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new HttpError(response.status, detail);
  }
  return response.json();
}

// Which optional areas (rollouts, telemetry) this server serves, from its own OpenAPI document.
async function paths() {
  if (apiPaths === null) apiPaths = Object.keys((await api("/openapi.json")).paths || {});
  return apiPaths;
}
async function hasPath(prefix) { return (await paths()).some((p) => p === prefix || p.startsWith(prefix + "/")); }
async function templatePath(prefix) { return (await paths()).find((p) => p.startsWith(prefix + "/{")) || null; }

// --- tiny DOM helpers (text is always set as text, never as HTML) ---
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))));
}
function empty(text) { return el("p", { class: "empty" }, text); }
function when(value) {
  if (value === null || value === undefined) return "—";
  const d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return isNaN(d) ? String(value) : d.toISOString().replace("T", " ").slice(0, 19);
}
function fmt(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(3);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}
function setStatus(text) { document.getElementById("status").textContent = text; }

// --- latest telemetry per device (backend, fallback) ---
async function telemetryOf(deviceId, minutes) {
  const tpl = await templatePath("/v1/telemetry");
  if (!tpl) return null;
  try { return await api(tpl.replace(/\{[^}]+\}/, encodeURIComponent(deviceId)) + "?minutes=" + minutes); }
  catch (e) { if (e.status === 404) return null; throw e; }
}

// --- devices ---
// The list is read in pages (keyset cursor): a fleet of thousands is never fetched in one response,
// nor is every device's telemetry fetched at once.
const DEVICE_PAGE = 200;
async function devicePage(cursor) {
  return api(`/v1/devices?limit=${DEVICE_PAGE}` + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
}
// Enrolment reports {"edgeml": v, "bundles": {model: version}}; telemetry ingest then keeps
// {model: version} at the top level up to date. The fresher top-level entries win.
function installedText(installed) {
  const merged = { ...((installed && installed.bundles) || {}) };
  for (const [key, value] of Object.entries(installed || {})) {
    if (key !== "edgeml" && key !== "bundles" && (typeof value === "string" || value === null)) merged[key] = value;
  }
  const parts = Object.entries(merged).map(([name, version]) => name + "@" + (version || "—"));
  return parts.length ? parts.join(", ") : "—";
}
// The newest telemetry window per model says which runtime/accelerator served it and whether that
// was a fallback from the bundle's preferred backend.
function servingOf(telemetry) {
  const latest = new Map();
  for (const w of (telemetry && telemetry.windows) || []) {
    const seen = latest.get(w.model);
    if (!seen || Date.parse(w.ts) > Date.parse(seen.ts)) latest.set(w.model, w);
  }
  const windows = [...latest.values()];
  if (!windows.length) return { backend: "—", fallback: "—" };
  return {
    backend: windows.map((w) => [w.runtime, w.device].filter(Boolean).join("/") || "—").join(", "),
    fallback: windows.map((w) => (w.fallback ? fmt(w.fallback) : "no")).join(", "),
  };
}
async function renderDevices(section, shown = [], cursor = null) {
  const page = await devicePage(cursor);
  const serving = await Promise.all(page.items.map(async (d) => ({ d, s: servingOf(await telemetryOf(d.id, 10)) })));
  const rows = [...shown, ...serving];
  const online = rows.filter(({ d }) => d.online).length;
  const more = page.next_cursor
    ? el("button", { type: "button", class: "more" }, `Show ${DEVICE_PAGE} more`) : null;
  if (more) more.addEventListener("click", () => renderDevices(section, rows, page.next_cursor));
  const count = page.next_cursor ? `first ${rows.length}` : `${rows.length}`;
  section.replaceChildren(el("h2", {}, `Devices (${count}, ${online} online)`),
    rows.length === 0 ? empty("No devices enrolled yet: edgeml-fleet enroll-token create, then edgeml-agent enroll.")
      : table(["Name", "Id", "Online", "Installed", "Backend", "Fallback", "Group / tags", "Last seen"],
        rows.map(({ d, s }) => [d.name, el("span", { class: "mono" }, d.id),
          el("span", { class: d.online ? "online" : "offline" }, d.online ? "online" : "offline"),
          installedText(d.installed), s.backend, s.fallback,
          [d.group || "—", d.tags.length ? " · " + d.tags.join(", ") : ""].join(""), when(d.last_seen)])),
    ...(more ? [more] : []));
}

// --- rollouts ---
function bar(done, total) {
  const pct = total > 0 ? Math.min(100, Math.round((100 * done) / total)) : 0;
  return el("span", {}, el("span", { class: "bar" }, el("span", { style: `width:${pct}%` })), ` ${done}/${total}`);
}
function pairs(obj) {
  const entries = Object.entries(obj || {}).filter(([, v]) => v !== null && v !== undefined);
  return entries.length ? entries.map(([k, v]) => `${k}: ${fmt(v)}`).join(", ") : "—";
}
// A wave's live figures: a figure the window had no data for (no requests: no latency) says so, never 0.
function liveFigures(live) {
  return Object.entries(live).map(([k, v]) => `${k}: ${v === null || v === undefined ? "no data" : fmt(v)}`).join(", ");
}
function rolloutBlock(r) {
  const waves = r.wave_list || [];
  const decisions = (r.decisions || []).slice(-6);
  return el("div", { class: "rollout", "data-rollout": r.id },
    el("h3", {}, `${r.id} — ${r.bundle} `, el("span", { class: "state-" + r.state }, r.state)),
    el("p", {}, `wave ${Math.min(r.wave, r.waves)} of ${r.waves} · ${r.devices} devices · selector ${pairs(r.selector)}`,
      r.reason ? el("span", { class: "warn" }, ` · ${r.reason}`) : null),
    el("p", {}, "Gates: ", pairs(r.gates)),
    el("p", { class: "live" }, "Gate figures (current wave): ", r.live ? liveFigures(r.live) : "—"),
    waves.length
      ? table(["Wave", "Share", "State", "Installed", "Devices by state"],
        waves.map((w) => [String(w.wave), w.percent !== null && w.percent !== undefined ? w.percent + "%" : "—",
          el("span", { class: "state-" + w.state }, w.state), bar((w.counts || {}).installed || 0, w.devices),
          pairs(w.counts)]))
      : empty("No devices selected yet."),
    decisions.length ? el("ul", { class: "decisions" }, decisions.map((d) =>
      el("li", {}, `${when(d.at)} ${d.action} `, el("span", { class: "mono" }, JSON.stringify(d.details))))) : null);
}
async function renderRollouts(section) {
  const detailPath = await templatePath("/v1/rollouts");
  if (!(await hasPath("/v1/rollouts")) || !detailPath) {
    section.replaceChildren(el("h2", {}, "Rollouts"), empty("No data yet: this server has no rollouts API."));
    return;
  }
  const rollouts = await api("/v1/rollouts");
  const details = await Promise.all(rollouts.slice(0, 20).map((r) =>
    api(detailPath.replace(/\{[^}]+\}/, encodeURIComponent(r.id)))));
  section.replaceChildren(el("h2", {}, `Rollouts (${rollouts.length})`),
    ...(details.length ? details.map(rolloutBlock)
      : [empty("No rollouts yet: edgeml-fleet rollout create BUNDLE@VERSION.")]));
}

// --- per-model-version charts ---
// History comes from the fleet's minute roll-ups (/v1/health/history), so it survives a reload. A point
// is [t, value] with value null where no data arrived: the line breaks there (a gap), never drops to 0.
const HISTORY_MINUTES = 60;
const COLORS = ["#2f5bd3", "#c0362c", "#12805c", "#b54708", "#7a2ed1", "#0e7490"];
function segments(points) { // runs of consecutive non-null points
  const runs = [[]];
  for (const p of points) {
    if (p[1] === null || p[1] === undefined) { if (runs[runs.length - 1].length) runs.push([]); }
    else runs[runs.length - 1].push(p);
  }
  return runs.filter((r) => r.length);
}
function lineChart(title, unit, series) {
  const W = 360, H = 160, L = 44, R = 8, T = 10, B = 22;
  const all = series.flatMap((s) => s.points);
  const known = all.filter((p) => p[1] !== null && p[1] !== undefined);
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n); return n;
  };
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#d0d5dd" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#d0d5dd" });
  if (known.length) {
    // the time axis spans the whole window asked for, data or not, so gaps show where they are
    const x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
    const yMax = Math.max(...known.map((p) => p[1]), 1e-9) * 1.1;
    const sx = (x) => L + (x1 > x0 ? ((x - x0) / (x1 - x0)) * (W - L - R) : (W - L - R) / 2);
    const sy = (y) => H - B - (y / yMax) * (H - T - B);
    add("text", { x: 2, y: T + 8 }, fmt(yMax) + unit);
    add("text", { x: 2, y: H - B }, "0");
    add("text", { x: L, y: H - 6 }, when(x0).slice(11));
    add("text", { x: W - R - 44, y: H - 6 }, when(x1).slice(11));
    series.forEach((s) => {
      const color = COLORS[s.color % COLORS.length];
      for (const run of segments(s.points.slice().sort((a, b) => a[0] - b[0]))) {
        add("polyline", { fill: "none", stroke: color, "stroke-width": 1.8, "data-series": s.name,
          points: run.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ") });
        for (const p of run) add("circle", { cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 2, fill: color });
      }
    });
  } else {
    add("text", { x: L + 10, y: H / 2 }, "no data");
  }
  return el("figure", {}, svg, el("figcaption", {}, title));
}
// One model's block: per version, p95 latency and error rate per minute, and drift per hour (the hourly
// roll-up keeps drift; the per-minute one does not) followed by the current score.
function modelBlock(model, history) {
  const keys = history.map((h) => `${model}@${h.version}`);
  const series = (pick) => history.map((h, i) => ({ name: keys[i], color: i,
    points: h.points.map((p) => [Date.parse(p.t) / 1000, pick(p)]) }));
  const lastData = (h) => [...h.points].reverse().find((p) => p.requests !== null);
  return el("div", { class: "model", "data-model": model }, el("h3", {}, model),
    el("p", { class: "legend" }, keys.map((key, i) => el("span", { style: `color:${COLORS[i % COLORS.length]}` }, "● " + key))),
    el("div", { class: "charts" },
      lineChart(`latency p95, all devices (last ${HISTORY_MINUTES} min)`, " ms", series((p) => p.p95_ms)),
      lineChart("error rate", "", series((p) => p.error_rate)),
      lineChart("drift (PSI, largest device; hourly, then now)", "", history.map((h, i) => ({ name: keys[i], color: i,
        points: [...(h.drift_hourly || []).map((d) => [Date.parse(d.t) / 1000, d.drift]),
          ...(h.drift === null || !lastData(h) ? [] : [[Date.parse(lastData(h).t) / 1000, h.drift]])] })))));
}
async function renderModels(section) {
  if (!(await hasPath("/v1/health/history"))) {
    section.replaceChildren(el("h2", {}, "Models"), empty("No data yet: this server has no history API."));
    return;
  }
  const health = await api(`/v1/health?minutes=${HISTORY_MINUTES}`);
  const models = [...new Set(health.map((h) => h.model))].sort();
  const histories = await Promise.all(models.map((m) =>
    api(`/v1/health/history?model=${encodeURIComponent(m)}&minutes=${HISTORY_MINUTES}`)));
  const blocks = models.map((m, i) => modelBlock(m, histories[i]));
  section.replaceChildren(el("h2", {}, "Models: latency, error rate and drift per version"),
    ...(blocks.length ? blocks : [empty("No data yet: no telemetry received from any device.")]));
}

// --- audit log ---
async function renderAudit(section) {
  let rows;
  try { rows = await api("/v1/audit?limit=200"); }
  catch (e) {
    if (e.status === 403) { section.replaceChildren(el("h2", {}, "Audit log"), empty("The audit log needs an admin token.")); return; }
    throw e;
  }
  section.replaceChildren(el("h2", {}, `Audit log (latest ${rows.length})`),
    rows.length ? table(["When", "Actor", "Action", "Target", "From", "Details"],
      rows.map((r) => [when(r.at), r.actor, el("span", { class: "mono" }, r.action), r.target, r.source,
        el("span", { class: "mono" }, JSON.stringify(r.details))])) : empty("Nothing recorded yet."));
}

// --- navigation ---
const RENDER = { devices: renderDevices, rollouts: renderRollouts, models: renderModels, audit: renderAudit,
  captures: (section) => renderCaptures(section) }; // captures.js

function showLogin(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  apiPaths = null;
  document.getElementById("nav").hidden = true;
  // Forget what the last token could see: nothing of it stays in the page for the next user.
  for (const p of PAGES) {
    const section = document.getElementById(p);
    section.hidden = true;
    section.replaceChildren();
    delete section.dataset.loaded;
  }
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

async function show() {
  if (!token()) { showLogin(); return; }
  const page = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "devices";
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  for (const p of PAGES) document.getElementById(p).hidden = p !== page;
  const section = document.getElementById(page);
  setStatus("loading " + page + "…");
  try {
    await RENDER[page](section);
    section.dataset.loaded = "true";
    setStatus("updated " + when(Date.now() / 1000) + " UTC");
  } catch (e) {
    if (e instanceof HttpError && e.status === 401) { showLogin("Token refused: " + e.message); return; }
    section.replaceChildren(el("p", { class: "error" }, "Could not load: " + e.message));
    setStatus("");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    show();
  });
  document.getElementById("logout").addEventListener("click", () => showLogin());
  window.addEventListener("hashchange", show);
  // Live view: refresh the visible page every 5 s while the tab is visible.
  setInterval(() => { if (token() && !document.hidden) show(); }, 5000);
  show();
});
