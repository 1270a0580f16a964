// edgeml fleet dashboard, captures page: the newest captured samples per model, with a thumbnail of
// image inputs (a PNG the fleet renders). Uses dashboard.js's helpers (api, el, table, empty, when, fmt).
"use strict";

const thumbnailUrls = new Map(); // "device/capture" -> object URL (kept: a sample never changes)

async function thumbnailOf(row) {
  const key = row.device + "/" + row.capture_id;
  if (thumbnailUrls.has(key)) return thumbnailUrls.get(key);
  let url = null;
  const response = await fetch(`/v1/captures/${encodeURIComponent(row.device)}/${encodeURIComponent(row.capture_id)}/thumbnail`,
    { headers: { Authorization: "Bearer " + token() } });
  if (response.ok) url = URL.createObjectURL(await response.blob());
  thumbnailUrls.set(key, url);
  return url;
}

async function renderCaptures(section) {
  if (!(await hasPath("/v1/captures"))) {
    section.replaceChildren(el("h2", {}, "Captures"), empty("This server has no captures API."));
    return;
  }
  const page = await api("/v1/captures?limit=200");
  const byModel = new Map();
  for (const row of page.captures) {
    if (!byModel.has(row.model)) byModel.set(row.model, []);
    byModel.get(row.model).push(row);
  }
  const blocks = [];
  for (const [model, rows] of [...byModel.entries()].sort()) {
    const shown = rows.slice(0, 24);
    const thumbs = await Promise.all(shown.map((r) => (r.tensors && Object.keys(r.tensors).some((k) => k.startsWith("in/")))
      ? thumbnailOf(r) : null));
    blocks.push(el("div", { class: "model", "data-model": model },
      el("h3", {}, `${model} (${rows.length} newest)`),
      table(["", "Received", "Device", "Version", "Trigger", "Figures"], shown.map((r, i) => [
        thumbs[i] ? el("img", { class: "thumb", src: thumbs[i], alt: "input of " + r.capture_id }) : "—",
        when(r.received_at), el("span", { class: "mono" }, r.device), r.version,
        el("span", { class: "mono" }, r.trigger), el("span", { class: "mono" }, fmt(r.figures))]))));
  }
  section.replaceChildren(el("h2", {}, "Captured samples per model"),
    ...(blocks.length ? blocks : [empty("No samples captured yet: enable a capture policy in a bundle or from the fleet.")]),
    el("p", { class: "legend" }, "Export for a build: ", el("code", {}, "edgeml-fleet captures export --model M -o DIR")));
}
