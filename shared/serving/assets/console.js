// The console: one page per task over the JSON API, with the key the user entered (kept in this
// tab's sessionStorage). Everything shown comes from the API and is written with textContent or
// SVG text nodes, never parsed as HTML. No inline script, no third party, no build step.
"use strict";

const KEY = "mlops-api-key";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const PAGES = ["predict", "models", "history", "monitoring", "training", "ab", "batch"];
let info = null; // GET /v1/models/{name} of the chosen model
let schema = null;

// ---- small helpers -------------------------------------------------------------------------

function say(text, kind) {
  $("message").textContent = text;
  $("message").className = kind || "";
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(5);
  if (v === null || v === undefined) return "";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

const model = () => $("model").value;
const path = (suffix) => `/v1/models/${encodeURIComponent(model())}${suffix || ""}`;

async function api(method, url, body) {
  const headers = { "x-api-key": sessionStorage.getItem(KEY) || "" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let json = null;
  try { json = await response.json(); } catch (_) { json = null; }
  return { status: response.status, json };
}

function refused(status, scope) {
  if (status === 401) return "No API key was sent: enter one above.";
  if (status === 403) return `This API key was refused (unknown, revoked, or without the scope this page needs): check it or use a key with the ${scope || "predict"} scope.`;
  return null;
}

// Says what went wrong with a call in the page's status line; true when it went wrong.
function failed(reply, what, scope) {
  if (reply.status >= 200 && reply.status < 300) return false;
  const detail = refused(reply.status, scope) || (reply.json && reply.json.error && reply.json.error.message) || `the API answered ${reply.status}`;
  say(`${what}: ${detail}`, "error");
  return true;
}

// A table; `sortable` makes each header a button that sorts by its column.
function table(headers, rows, sortable) {
  const t = el("table");
  const head = el("tr");
  headers.forEach((h, i) => {
    const th = el("th", sortable ? null : h, { scope: "col" });
    if (sortable) {
      const b = el("button", h, { type: "button", class: "sort" });
      b.addEventListener("click", () => {
        const down = b.dataset.down !== "true";
        const key = (r) => (typeof r[i] === "number" ? r[i] : fmt(r[i]));
        rows.sort((a, z) => (key(a) < key(z) ? -1 : key(a) > key(z) ? 1 : 0) * (down ? 1 : -1));
        const fresh = table(headers, rows, true);
        fresh.querySelectorAll("button.sort")[i].dataset.down = String(down);
        t.replaceWith(fresh);
        fresh.querySelectorAll("button.sort")[i].focus();
      });
      th.append(b);
    }
    head.append(th);
  });
  const body = el("tbody");
  for (const row of rows) {
    const tr = el("tr");
    for (const cell of row) {
      const td = el("td");
      if (cell instanceof Node) td.append(cell); else td.textContent = fmt(cell);
      tr.append(td);
    }
    body.append(tr);
  }
  t.append(el("thead"), body);
  t.firstChild.append(head);
  const wrap = el("div", null, { class: "scroll" });
  wrap.append(t);
  return wrap;
}

// A line chart of series [{name, points: [[x, y]]}].
function lines(title, series) {
  const w = 560, h = 160, pad = 30;
  const all = series.flatMap((s) => s.points);
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: "100%", role: "img", "aria-label": title });
  if (!all.length) return chart;
  const [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  const [y0, y1] = [Math.min(0, ...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]), 1e-12)];
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (w - 2 * pad);
  const sy = (y) => h - pad - ((y - y0) / (y1 - y0 || 1)) * (h - 2 * pad);
  chart.append(svg("text", { x: 2, y: 12 }, title), svg("text", { x: 2, y: h - 4 }, fmt(y0)), svg("text", { x: 2, y: 26 }, fmt(y1)));
  const colours = ["#1a5fb4", "#b5261e", "#26a269", "#986a44"];
  series.forEach((s, i) => {
    chart.append(svg("polyline", { fill: "none", stroke: colours[i % 4], "stroke-width": 2, points: s.points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" ") }));
    chart.append(svg("text", { x: w - 150, y: 14 + 14 * i, fill: colours[i % 4] }, s.name));
  });
  return chart;
}

// Horizontal bars for [label, value] pairs (signed values grow left or right of the middle).
function bars(title, pairs) {
  const width = 560, row = 22, label = 190, half = (width - label) / 2;
  const max = Math.max(...pairs.map((p) => Math.abs(p[1])), 1e-12);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${row * pairs.length + 4}`, width: "100%", role: "img", "aria-label": title });
  pairs.forEach(([name, value], i) => {
    const y = i * row + 2, length = (Math.abs(value) / max) * (half - 4);
    chart.append(svg("text", { x: label - 6, y: y + 15, "text-anchor": "end" }, name));
    const bar = svg("rect", { x: value >= 0 ? label + half : label + half - length, y: y + 3, width: Math.max(length, 1), height: row - 6, fill: value >= 0 ? "#b5261e" : "#1a5fb4" });
    bar.append(svg("title", {}, `${name}: ${fmt(value)}`));
    chart.append(bar);
  });
  return chart;
}

// Reference and current shares of one feature's bins, side by side.
function histogram(h) {
  const w = 560, height = 120, n = h.labels.length, slot = (w - 20) / Math.max(n, 1);
  const max = Math.max(...h.reference, ...h.current, 1e-12);
  const chart = svg("svg", { viewBox: `0 0 ${w} ${height + 18}`, width: "100%", role: "img", "aria-label": `${h.feature}: reference (grey) and current (blue) distributions` });
  h.labels.forEach((label, i) => {
    [[h.reference[i], "#9a9996", 0], [h.current[i], "#1a5fb4", 1]].forEach(([v, colour, k]) => {
      const bh = (v / max) * height;
      const bar = svg("rect", { x: 10 + i * slot + k * slot * 0.45, y: height - bh, width: slot * 0.42, height: Math.max(bh, 0.5), fill: colour });
      bar.append(svg("title", {}, `${label}: ${k ? "current" : "reference"} ${(v * 100).toFixed(1)}%`));
      chart.append(bar);
    });
  });
  chart.append(svg("text", { x: 10, y: height + 14 }, `${h.labels[0] || ""} … ${h.labels[n - 1] || ""}`));
  return chart;
}

// Fetches with the key and saves the body as a file.
async function download(url, filename) {
  const response = await fetch(url, { headers: { "x-api-key": sessionStorage.getItem(KEY) || "" } });
  if (!response.ok) {
    let json = null;
    try { json = await response.json(); } catch (_) { json = null; }
    failed({ status: response.status, json }, "Export", "admin");
    return;
  }
  const link = el("a", null, { download: filename });
  link.href = URL.createObjectURL(await response.blob());
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// ---- key, models, navigation ---------------------------------------------------------------

async function useKey(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  await loadModels();
}

async function loadModels() {
  const { status, json } = await api("GET", "/v1/models");
  const problem = refused(status);
  if (problem || status !== 200) {
    say(problem || `The API answered ${status}.`, "error");
    $("nav").hidden = true;
    for (const p of PAGES) $(p).hidden = true;
    return;
  }
  say(`Key accepted: ${json.models.length} model(s) served.`, "ok");
  const select = $("model");
  select.replaceChildren(...json.models.map((name) => el("option", name, { value: name })));
  $("nav").hidden = false;
  if (json.models.length) await chooseModel();
}

async function chooseModel() {
  const reply = await api("GET", path());
  if (failed(reply, `Model ${model()}`)) return;
  info = reply.json;
  schema = info.input_schema;
  await show();
}

function currentPage() {
  const name = location.hash.slice(1);
  return PAGES.includes(name) ? name : "predict";
}

async function show() {
  if (!info) return;
  const page = currentPage();
  for (const p of PAGES) $(p).hidden = p !== page;
  for (const a of $("nav").querySelectorAll("a")) {
    if (a.getAttribute("href") === `#${page}`) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  await LOADERS[page]();
}

// ---- predict -------------------------------------------------------------------------------

function featureColumns() {
  return schema.columns.filter((c) => (c.role || "feature") === "feature" && c.type !== "text");
}

function loadPredict() {
  const champion = info.aliases && info.aliases.champion;
  $("model-summary").textContent = `${info.task}; ${info.versions.length} version(s)${champion ? `; champion v${champion}` : ""}.`;
  const fields = $("fields");
  if (fields.dataset.model === info.name) return;
  fields.dataset.model = info.name;
  fields.replaceChildren();
  featureColumns().forEach((column, i) => {
    const wrap = el("div");
    const id = `field-${i}`;
    const label = el("label", column.name, { for: id });
    let input;
    if (column.type === "categorical") {
      input = el("select");
      input.append(...column.categories.map((c) => el("option", c, { value: c })));
    } else {
      input = el("input", null, { type: "text", inputmode: "decimal" });
      if (column.min !== undefined && column.max !== undefined) {
        input.placeholder = `${column.min} to ${column.max}`;
        input.value = String((column.min + column.max) / 2);
      }
    }
    input.id = id;
    input.dataset.field = column.name;
    input.dataset.kind = column.type;
    const error = el("span", null, { class: "field-error", id: `${id}-error`, "aria-live": "polite" });
    input.setAttribute("aria-describedby", error.id);
    wrap.append(label, input, error);
    fields.append(wrap);
  });
  $("result").hidden = true;
}

function record() {
  const out = {};
  for (const input of $("fields").querySelectorAll("[data-field]")) {
    const raw = input.value.trim();
    if (raw === "") continue;
    const number = Number(raw);
    // A number field sends a number when it reads as one, else the text (the API names it).
    out[input.dataset.field] = input.dataset.kind === "categorical" || Number.isNaN(number) ? raw : number;
  }
  return out;
}

function showFieldErrors(error) {
  const byName = new Map([...$("fields").querySelectorAll("[data-field]")].map((i) => [i.dataset.field, i]));
  const unplaced = [];
  for (const problem of error.fields || []) {
    const input = byName.get(problem.field);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      $(`${input.id}-error`).textContent = problem.message;
    } else {
      unplaced.push(`${problem.field}: ${problem.message}`);
    }
  }
  say([error.message, ...unplaced].join(" "), "error");
}

function curl(body) {
  const url = `${location.origin}${path("/predict")}?explain=true`;
  const quoted = JSON.stringify(body).replace(/'/g, "'\\''");
  return `curl -s '${url}' -H 'content-type: application/json' -H "x-api-key: $MLOPS_API_KEY" -d '${quoted}'`;
}

async function predict(event) {
  event.preventDefault();
  for (const input of $("fields").querySelectorAll("[data-field]")) {
    input.removeAttribute("aria-invalid");
    $(`${input.id}-error`).textContent = "";
  }
  const body = record();
  const { status, json } = await api("POST", `${path("/predict")}?explain=true`, body);
  $("curl").textContent = curl(body);
  if (status !== 200) {
    $("result").hidden = true;
    const problem = refused(status);
    if (problem) say(problem, "error");
    else if (json && json.error) showFieldErrors(json.error);
    else say(`The API answered ${status}.`, "error");
    return;
  }
  const p = json.predictions[0];
  const shown = p.label !== undefined ? `${p.label} (${p.prediction.toPrecision(4)})` : p.prediction.toPrecision(6);
  $("prediction").textContent = `${shown} — ${json.model} v${json.version}, ${json.variant}`;
  const contributions = ((p.explanation && p.explanation.contributions) || []).map((c) => [c.feature, c.contribution]);
  contributions.sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
  $("contributions").replaceChildren(bars("Contribution of each feature to the prediction", contributions));
  $("result").hidden = false;
  say(`Predicted (request ${json.request_id}).`, "ok");
}

// ---- models --------------------------------------------------------------------------------

let audit = null;

async function loadModels_() {
  $("aliases").replaceChildren(table(["Alias", "Version"], Object.entries(info.aliases)));
  const rows = info.versions.map((v) => [v.version, v.model_kind, v.registered_at,
    Object.entries(v.metrics || {}).map(([k, x]) => `${k} ${fmt(x)}`).join(", "),
    v.lineage ? `${v.lineage.data_source} (sha256 ${v.lineage.data_sha256.slice(0, 12)})` : "(admin key)",
    v.lineage ? v.lineage.code_commit.slice(0, 12) : "", v.registered_by || ""]);
  $("versions").replaceChildren(table(["Version", "Kind", "Registered", "Test metrics", "Data", "Commit", "By"], rows.reverse(), true));
  const card = info.card || {};
  const approval = card.approval ? `${card.approval.approved_by}, ${card.approval.approved_at}${card.approval.note ? ` — ${card.approval.note}` : ""}` : "not approved";
  $("card").replaceChildren(...[["Intended use", card.intended_use], ["Limitations", card.limitations], ["Owner", card.owner], ["Training data", card.training_data], ["Approval", approval]]
    .flatMap(([k, v]) => [el("dt", k), el("dd", v || "—")]));
  $("change-version").replaceChildren(...info.versions.map((v) => el("option", `v${v.version}`, { value: v.version })).reverse());
  const reply = await api("GET", path("/audit"));
  if (reply.status === 200) {
    audit = reply.json;
    const events = [...audit.history].reverse().map((e) => [e.revision, e.at, e.alias, e.action, e.from === null || e.from === undefined ? "—" : `v${e.from}`, `v${e.to}`, e.actor, e.reason]);
    $("audit").replaceChildren(table(["Revision", "At", "Alias", "Action", "From", "To", "Actor", "Reason"], events));
  } else {
    audit = null;
    $("audit").replaceChildren(el("p", refused(reply.status, "admin") || `The API answered ${reply.status}.`));
  }
}

// The versions an alias pointed at, replaying promotions and rollbacks (as the registry does).
function stack(alias) {
  const out = [];
  for (const e of (audit ? audit.history : []).filter((x) => x.alias === alias)) {
    if (e.action === "promote") out.push(e.to); else out.pop();
  }
  return out;
}

let pending = null;

function reviewChange(event) {
  event.preventDefault();
  const action = $("change-action").value, alias = $("change-alias").value.trim();
  const version = Number($("change-version").value), reason = $("change-reason").value.trim();
  if (!reason) { say("Say why: the reason is kept in the audit log.", "error"); $("change-reason").focus(); return; }
  const now = info.aliases[alias];
  let text;
  if (action === "promote") {
    text = `Point alias '${alias}' of ${info.name} at v${version} (now ${now ? `v${now}` : "unset"}).`;
    pending = ["POST", path(`/aliases/${encodeURIComponent(alias)}`), { version, reason }];
  } else if (action === "rollback") {
    const s = stack(alias);
    text = `Roll alias '${alias}' of ${info.name} back from ${now ? `v${now}` : "unset"} to ${s.length > 1 ? `v${s[s.length - 2]}` : "the version before its latest promotion"}.`;
    pending = ["POST", path(`/aliases/${encodeURIComponent(alias)}/rollback`), { reason }];
  } else {
    text = `Approve the model card of ${info.name} v${version} (note: ${reason}).`;
    pending = ["POST", path(`/versions/${version}/approve`), { note: reason }];
  }
  $("confirm-text").textContent = `${text} This is recorded under your key's name.`;
  $("confirm").hidden = false;
  $("confirm-yes").focus();
}

async function confirmChange() {
  $("confirm").hidden = true;
  const reply = await api(...pending);
  if (failed(reply, "The change was refused", "admin")) return;
  say(reply.json.revision ? `Done: revision ${reply.json.revision}, '${reply.json.alias}' now v${reply.json.to}.` : "Done: the card is approved.", "ok");
  await chooseModel();
}

// ---- history -------------------------------------------------------------------------------

let historyQuery = null;
let cursors = [];

function utc(id) {
  const v = $(id).value;
  return v ? new Date(`${v}Z`).toISOString() : null;
}

function loadHistory() {
  const select = $("h-field");
  if (select.dataset.model !== info.name) {
    select.dataset.model = info.name;
    select.replaceChildren(el("option", "(none)", { value: "" }), ...featureColumns().map((c) => el("option", c.name, { value: c.name })));
  }
  if (!historyQuery) return runHistory();
}

async function runHistory(event) {
  if (event) event.preventDefault();
  const q = new URLSearchParams();
  const until = utc("h-until") || new Date().toISOString();
  q.set("until", until);
  q.set("from", utc("h-from") || new Date(Date.parse(until) - 864e5).toISOString());
  for (const [id, name] of [["h-version", "version"], ["h-variant", "variant"], ["h-field", "field"], ["h-min", "min"], ["h-max", "max"], ["h-equals", "equals"]]) {
    const v = $(id).value.trim();
    if (v) q.set(name, v);
  }
  historyQuery = q;
  cursors = [null];
  await historyPage(0);
}

async function historyPage(index) {
  const q = new URLSearchParams(historyQuery);
  q.set("limit", $("h-limit").value.trim() || "50");
  if (cursors[index]) q.set("cursor", cursors[index]);
  const reply = await api("GET", `${path("/predictions")}?${q}`);
  if (failed(reply, "History", "admin")) { $("history-table").replaceChildren(); return; }
  const page = reply.json;
  cursors = cursors.slice(0, index + 1);
  if (page.next_cursor) cursors.push(page.next_cursor);
  const names = featureColumns().map((c) => c.name);
  const rows = page.predictions.map((p) => [p.at, p.request_id, p.record, p.version, p.variant, p.output, p.actual === undefined ? "" : p.actual, ...names.map((n) => (p.input || {})[n])]);
  $("history-table").replaceChildren(table(["At", "Request", "Record", "Version", "Variant", "Output", "Actual", ...names], rows));
  $("history-summary").textContent = `Page ${index + 1}: ${rows.length} prediction(s) from ${page.from} to ${page.until}, newest first (${page.scanned} records read).`;
  $("h-newer").disabled = index === 0;
  $("h-older").disabled = !page.next_cursor;
  $("h-newer").onclick = () => historyPage(index - 1);
  $("h-older").onclick = () => historyPage(index + 1);
}

function exportHistory(format) {
  if (!historyQuery) return;
  const q = new URLSearchParams(historyQuery);
  q.set("format", format);
  return download(`${path("/predictions/export")}?${q}`, `${info.name}-predictions.${format}`);
}

// ---- monitoring ----------------------------------------------------------------------------

async function loadMonitoring() {
  const reply = await api("GET", path("/monitoring"));
  if (failed(reply, "Monitoring", "admin")) return;
  const { latest, series } = reply.json;
  for (const id of ["alerts", "series", "drift", "histograms"]) $(id).replaceChildren();
  if (!latest) { $("monitoring-summary").textContent = "No monitor report yet: run `mlops monitor` (on AWS the monitor function runs it on a schedule)."; return; }
  $("monitoring-summary").textContent = `Window ${latest.from} to ${latest.until}: ${latest.records} prediction(s), ${latest.labelled || 0} with labels.`;
  $("alerts").replaceChildren(...(latest.alerts.length ? latest.alerts.map((a) => el("li", `${a.rule} (v${a.version}): ${a.summary}`)) : [el("li", "None in this window.")]));
  const t = (s) => Date.parse(s.until);
  $("series").append(lines("Predictions per window", [{ name: "records", points: series.map((s) => [t(s), s.records || 0]) }]));
  $("series").append(lines("Share of features drifted", [{ name: "drifted share", points: series.filter((s) => s.versions.length).map((s) => [t(s), s.versions[0].drifted_share || 0]) }]));
  for (const v of latest.versions) {
    const features = v.drift.features.map((f) => [f.feature, f.test, f.score, f.threshold, f.drifted ? el("strong", "DRIFTED", { class: "error" }) : "no", f.psi]);
    $("drift").append(el("h4", `Version ${v.version}: ${v.drift.drifted ? "data drift" : "no data drift"} (${v.drift.drifted_features} of ${v.drift.features.length} features)`));
    $("drift").append(table(["Feature", "Test", "Score", "Threshold", "Drifted", "PSI"], features, true));
    for (const [variant, q] of Object.entries(v.quality || {})) {
      const metrics = Object.entries(q.metrics || {}).map(([k, m]) => `${k} ${fmt(m.value !== undefined ? m.value : m)}`).join(", ");
      $("drift").append(el("p", `Live quality of ${variant}: ${q.labelled} labelled of ${q.rows}${metrics ? `; ${metrics}` : ""}.`));
    }
    const drifted = new Set(v.drift.features.filter((f) => f.drifted).map((f) => f.feature));
    const ordered = [...v.histograms].sort((a, b) => drifted.has(b.feature) - drifted.has(a.feature));
    for (const h of ordered) {
      const figure = el("figure");
      figure.append(histogram(h), el("figcaption", `${h.feature}${drifted.has(h.feature) ? " — drifted" : ""} (v${v.version}; grey: reference, blue: current)`));
      $("histograms").append(figure);
    }
  }
}

// ---- training ------------------------------------------------------------------------------

let runs = [];

async function loadTraining(event) {
  if (event) event.preventDefault();
  if (!$("experiment").value) $("experiment").value = info.name;
  const reply = await api("GET", `/v1/runs?experiment=${encodeURIComponent($("experiment").value.trim())}`);
  if (failed(reply, "Training runs", "admin")) return;
  runs = reply.json.runs;
  const parents = runs.filter((r) => !r.parent_run_id);
  const keys = [...new Set(parents.flatMap((r) => Object.keys(r.metrics)))].filter((k) => !k.startsWith("gpu_") && !k.startsWith("search_")).slice(0, 5);
  const rows = parents.map((r) => {
    const open = el("button", r.run_name || r.run_id, { type: "button" });
    open.addEventListener("click", () => showRun(r.run_id));
    return [open, r.status, new Date(r.start_time).toISOString(), ...keys.map((k) => r.metrics[k])];
  });
  $("runs").replaceChildren(rows.length ? table(["Run", "Status", "Started", ...keys], rows, true) : el("p", "No runs in this experiment."));
  $("run-detail").hidden = true;
}

async function showRun(id) {
  const reply = await api("GET", `/v1/runs/${encodeURIComponent(id)}`);
  if (failed(reply, "Run", "admin")) return;
  const run = reply.json;
  $("run-title").textContent = `${run.run_name} (${run.status})`;
  const m = run.metrics;
  $("selection").textContent = m.selection_p_value !== undefined
    ? `Selected ${run.tags["mlops.model_kind"] || run.params.model_kind || "the best candidate"} over ${run.tags["mlops.selection.runner_up"] || "the runner-up"}: mean difference ${fmt(m.selection_mean_difference)}, t = ${fmt(m.selection_t)}, p = ${fmt(m.selection_p_value)} (corrected paired t-test over the CV folds).`
    : "No selection test recorded (one candidate, or an earlier build).";
  const trials = runs.filter((r) => r.parent_run_id === id);
  const params = [...new Set(trials.flatMap((r) => Object.keys(r.params)))].slice(0, 6);
  const metrics = [...new Set(trials.flatMap((r) => Object.keys(r.metrics)))].slice(0, 4);
  const rows = trials.map((r) => [r.run_name, r.tags["mlops.trial.status"] || r.status, ...metrics.map((k) => r.metrics[k]), ...params.map((k) => r.params[k])]);
  $("trials").replaceChildren(rows.length ? table(["Trial", "Status", ...metrics, ...params], rows, true) : el("p", "No search trials (no search was run)."));
  const gpu = Object.entries(run.history || {}).filter(([k]) => k.startsWith("gpu_"));
  $("gpu").replaceChildren(...(gpu.length ? gpu.map(([k, points]) => lines(k, [{ name: k, points }])) : [el("p", "No GPU telemetry (trained on CPU).")]));
  $("run-detail").hidden = false;
}

// ---- A/B -----------------------------------------------------------------------------------

let proposed = null;

function loadAb() {
  $("variants").replaceChildren(table(["Alias", "Weight %", "Version", "Kind", "Loaded"], info.served.map((s) => [s.alias, s.weight, s.version, s.model_kind, s.loaded_at])));
  const verdicts = ((info.ab_test && info.ab_test.verdicts) || []).map((v) => [`${v.challenger} vs ${v.champion}`, v.verdict.decision, `${v.rows[0]} / ${v.rows[1]}`, `${fmt(v.mean_loss[0])} / ${fmt(v.mean_loss[1])}`, v.verdict.p_value, v.verdict.rows_still_needed]);
  $("verdicts").replaceChildren(verdicts.length ? table(["Test", "Verdict", "Labelled rows", `Mean ${(info.ab_test.verdicts[0] || {}).loss || "loss"}`, "p", "Rows still needed"], verdicts) : el("p", "No verdict yet: one variant, or no labels for the challenger in the monitor's last window."));
  const weights = $("weights");
  weights.replaceChildren();
  const current = Object.fromEntries(info.served.map((s) => [s.alias, s.weight]));
  for (const alias of Object.keys(info.aliases)) {
    const wrap = el("div");
    const input = el("input", null, { id: `w-${alias}`, inputmode: "numeric", "data-alias": alias });
    input.value = String(current[alias] || 0);
    wrap.append(el("label", `${alias} (v${info.aliases[alias]}) %`, { for: input.id }), input);
    weights.append(wrap);
  }
}

function reviewTraffic(event) {
  event.preventDefault();
  const current = Object.fromEntries(info.served.map((s) => [s.alias, s.weight]));
  proposed = {};
  const changes = [];
  for (const input of $("weights").querySelectorAll("input")) {
    const w = Number(input.value);
    if (w > 0) proposed[input.dataset.alias] = w;
    if (w !== (current[input.dataset.alias] || 0)) changes.push(`${input.dataset.alias} ${current[input.dataset.alias] || 0}% → ${w}%`);
  }
  $("traffic-confirm-text").textContent = changes.length ? `Change the split of ${info.name}: ${changes.join(", ")}.` : "The split would not change.";
  $("traffic-confirm").hidden = false;
  $("traffic-yes").focus();
}

async function confirmTraffic() {
  $("traffic-confirm").hidden = true;
  const reply = await api("PUT", path("/traffic"), { weights: proposed });
  if (failed(reply, "The split was refused", "admin")) return;
  say(`Split stored (revision ${reply.json.revision}).`, "ok");
  await chooseModel();
}

// ---- batch jobs ----------------------------------------------------------------------------

async function loadBatch() {
  const reply = await api("GET", "/v1/batch-jobs");
  if (failed(reply, "Batch jobs", "admin")) { $("jobs").replaceChildren(); return; }
  const rows = reply.json.jobs.map((j) => {
    const check = el("button", j.id.slice(0, 12), { type: "button", "aria-label": `progress of job ${j.id}` });
    check.addEventListener("click", () => jobProgress(j.id));
    return [check, j.model, j.version, j.state, j.shards || 1, j.created_at, j.input_uri, j.results_uri || j.output_uri];
  });
  $("jobs").replaceChildren(rows.length ? table(["Job", "Model", "Version", "State", "Containers", "Created", "Input", "Results"], rows) : el("p", "No batch jobs yet."));
}

async function jobProgress(id) {
  const reply = await api("GET", `/v1/batch-jobs/${encodeURIComponent(id)}`);
  if (failed(reply, "Batch job", "admin")) return;
  const j = reply.json, p = j.progress;
  const done = p ? `${p.rows_done} rows${p.rows_total ? ` of ${p.rows_total}` : ""}${p.fraction !== null && p.fraction !== undefined ? ` (${(p.fraction * 100).toFixed(0)}%)` : ""}, ${p.rows_rejected} rejected` : "no checkpoint yet";
  say(`Job ${j.id}: ${j.state}${j.queue_state ? ` (${j.queue_state})` : ""}; ${done}${j.results_uri ? `; results in ${j.results_uri}` : ""}${j.reason ? `; ${j.reason}` : ""}.`, j.state === "failed" ? "error" : "ok");
  return j;
}

async function submitBatch(event) {
  event.preventDefault();
  const file = $("b-file").files[0], uri = $("b-uri").value.trim();
  const body = { model: info.name, alias: $("b-alias").value.trim() || "champion" };
  if (!file) body.input_uri = uri;
  const shards = Number($("b-shards").value || "1");
  if (shards > 1) body.shards = shards;
  const reply = await api("POST", "/v1/batch-jobs", body);
  if (failed(reply, "The job was refused", "admin")) return;
  let job = reply.json;
  if (file) {
    if (!job.upload_url) { say("This deployment hands out no upload URL: give an input URI instead.", "error"); return; }
    const put = await fetch(job.upload_url, { method: "PUT", headers: job.upload_headers || {}, body: file });
    if (!put.ok) { say(`The upload was refused (${put.status}).`, "error"); return; }
    const start = await api("POST", `/v1/batch-jobs/${encodeURIComponent(job.id)}/start`);
    if (failed(start, "The job did not start", "admin")) return;
    job = start.json;
  }
  await loadBatch();
  for (let i = 0; i < 150 && job && !["succeeded", "failed"].includes(job.state); i += 1) {
    await new Promise((r) => setTimeout(r, 2000));
    job = await jobProgress(job.id);
  }
  await loadBatch();
  if (job) await jobProgress(job.id);
}

const LOADERS = { predict: loadPredict, models: loadModels_, history: loadHistory, monitoring: loadMonitoring, training: loadTraining, ab: loadAb, batch: loadBatch };

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", useKey);
  $("record").addEventListener("submit", predict);
  $("model").addEventListener("change", () => { historyQuery = null; $("experiment").value = ""; chooseModel(); });
  $("change-form").addEventListener("submit", reviewChange);
  $("confirm-yes").addEventListener("click", confirmChange);
  $("confirm-no").addEventListener("click", () => { $("confirm").hidden = true; say("Nothing changed.", ""); });
  $("history-form").addEventListener("submit", runHistory);
  $("h-csv").addEventListener("click", () => exportHistory("csv"));
  $("h-jsonl").addEventListener("click", () => exportHistory("jsonl"));
  $("training-form").addEventListener("submit", loadTraining);
  $("traffic-form").addEventListener("submit", reviewTraffic);
  $("traffic-yes").addEventListener("click", confirmTraffic);
  $("traffic-no").addEventListener("click", () => { $("traffic-confirm").hidden = true; say("Nothing changed.", ""); });
  $("batch-form").addEventListener("submit", submitBatch);
  window.addEventListener("hashchange", () => { show(); $("main").focus(); });
  if (sessionStorage.getItem(KEY)) loadModels();
});
