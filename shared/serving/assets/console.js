// The console: enter a key (kept in this tab's sessionStorage), pick a served model, fill a form
// generated from its input schema, see the prediction, its TreeSHAP contributions and the same
// request as curl. Everything it shows comes from the JSON API and is written with textContent
// or SVG text nodes, never parsed as HTML. No inline script, no third party.
"use strict";

const KEY = "mlops-api-key";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let schema = null;

function say(text, kind) {
  $("message").textContent = text;
  $("message").className = kind || "";
}

async function api(method, path, body) {
  const headers = { "x-api-key": sessionStorage.getItem(KEY) || "" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let json = null;
  try { json = await response.json(); } catch (_) { json = null; }
  return { status: response.status, json };
}

function refused(status) {
  if (status === 401) return "No API key was sent: enter one above.";
  if (status === 403) return "This API key was refused (unknown, revoked, or without the scope this page needs): check it or ask for a key with the predict scope.";
  return null;
}

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
    $("predict").hidden = true;
    return;
  }
  say(`Key accepted: ${json.models.length} model(s) served.`, "ok");
  const select = $("model");
  select.replaceChildren();
  for (const name of json.models) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    select.append(option);
  }
  $("predict").hidden = false;
  if (json.models.length) await loadModel(json.models[0]);
}

function featureColumns(inputSchema) {
  return inputSchema.columns.filter((c) => (c.role || "feature") === "feature" && c.type !== "text");
}

async function loadModel(name) {
  const { status, json } = await api("GET", `/v1/models/${encodeURIComponent(name)}`);
  if (status !== 200) {
    say(refused(status) || `Model ${name}: the API answered ${status}.`, "error");
    return;
  }
  schema = json.input_schema;
  const champion = json.aliases && json.aliases.champion;
  $("model-summary").textContent = `${json.task}; ${json.versions.length} version(s)${champion ? `; champion v${champion}` : ""}.`;
  const fields = $("fields");
  fields.replaceChildren();
  featureColumns(schema).forEach((column, i) => {
    const wrap = document.createElement("div");
    const label = document.createElement("label");
    const id = `field-${i}`;
    label.htmlFor = id;
    label.textContent = column.name;
    let input;
    if (column.type === "categorical") {
      input = document.createElement("select");
      for (const category of column.categories) {
        const option = document.createElement("option");
        option.value = category;
        option.textContent = category;
        input.append(option);
      }
    } else {
      input = document.createElement("input");
      input.type = "text";
      input.inputMode = "decimal";
      if (column.min !== undefined && column.max !== undefined) {
        input.placeholder = `${column.min} to ${column.max}`;
        input.value = String((column.min + column.max) / 2);
      }
    }
    input.id = id;
    input.dataset.field = column.name;
    input.dataset.kind = column.type;
    const error = document.createElement("span");
    error.className = "field-error";
    error.id = `${id}-error`;
    error.setAttribute("aria-live", "polite");
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

function clearErrors() {
  for (const input of $("fields").querySelectorAll("[data-field]")) {
    input.removeAttribute("aria-invalid");
    $(`${input.id}-error`).textContent = "";
  }
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

function chart(contributions) {
  const sorted = [...contributions].sort((a, b) => Math.abs(b.contribution) - Math.abs(a.contribution));
  const width = 560, row = 22, label = 190, half = (width - label) / 2;
  const max = Math.max(...sorted.map((c) => Math.abs(c.contribution)), 1e-12);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${row * sorted.length + 4}`);
  svg.setAttribute("width", "100%");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Contribution of each feature to the prediction");
  sorted.forEach((c, i) => {
    const y = i * row + 2;
    const name = document.createElementNS(SVG, "text");
    name.setAttribute("x", label - 6);
    name.setAttribute("y", y + 15);
    name.setAttribute("text-anchor", "end");
    name.textContent = c.feature;
    const length = (Math.abs(c.contribution) / max) * (half - 4);
    const bar = document.createElementNS(SVG, "rect");
    bar.setAttribute("x", c.contribution >= 0 ? label + half : label + half - length);
    bar.setAttribute("y", y + 3);
    bar.setAttribute("width", Math.max(length, 1));
    bar.setAttribute("height", row - 6);
    bar.setAttribute("fill", c.contribution >= 0 ? "#b5261e" : "#1a5fb4");
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${c.feature}: ${c.contribution.toPrecision(4)}`;
    bar.append(title);
    svg.append(name, bar);
  });
  return svg;
}

function curl(model, body) {
  const url = `${location.origin}/v1/models/${encodeURIComponent(model)}/predict?explain=true`;
  const quoted = JSON.stringify(body).replace(/'/g, "'\\''");
  return `curl -s '${url}' -H 'content-type: application/json' -H "x-api-key: $MLOPS_API_KEY" -d '${quoted}'`;
}

async function predict(event) {
  event.preventDefault();
  clearErrors();
  const model = $("model").value;
  const body = record();
  const { status, json } = await api("POST", `/v1/models/${encodeURIComponent(model)}/predict?explain=true`, body);
  $("curl").textContent = curl(model, body);
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
  const contributions = (p.explanation && p.explanation.contributions) || [];
  $("contributions").replaceChildren(chart(contributions));
  $("result").hidden = false;
  say(`Predicted (request ${json.request_id}).`, "ok");
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", useKey);
  $("record").addEventListener("submit", predict);
  $("model").addEventListener("change", (e) => loadModel(e.target.value));
  if (sessionStorage.getItem(KEY)) loadModels();
});
