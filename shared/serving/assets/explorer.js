// The API explorer: reads /openapi.json (with the tab's key, if any, to see the served models),
// lists its operations and sends requests to this origin. No inline script; no third party.
"use strict";

const KEY = "mlops-api-key";
const $ = (id) => document.getElementById(id);
let spec = null;
let current = null;

function headers() {
  const h = { "content-type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) h["x-api-key"] = key;
  return h;
}

function example(schema) {
  if (!schema) return null;
  if (schema.$ref) return example(resolve(schema.$ref));
  if (schema.oneOf) return example(schema.oneOf[0]);
  if (schema.enum) return schema.enum[0];
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  switch (type) {
    case "object": {
      const out = {};
      for (const [name, prop] of Object.entries(schema.properties || {})) out[name] = example(prop);
      return out;
    }
    case "array": return [example(schema.items)];
    case "number": case "integer": return schema.minimum ?? 0;
    case "boolean": return false;
    default: return "";
  }
}

function resolve(ref) {
  return ref.split("/").slice(1).reduce((node, part) => node && node[part], spec);
}

async function load() {
  const response = await fetch("/openapi.json", { headers: headers() });
  spec = await response.json();
  $("key-state").textContent = sessionStorage.getItem(KEY) ? "key set for this tab" : "no key";
  const nav = $("operations");
  nav.replaceChildren();
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      const button = document.createElement("button");
      button.type = "button";
      const verb = document.createElement("span");
      verb.className = "method";
      verb.textContent = method.toUpperCase();
      button.append(verb, path);
      button.addEventListener("click", () => show(button, path, method, op));
      nav.append(button);
    }
  }
}

function show(button, path, method, op) {
  document.querySelectorAll("nav button").forEach((b) => b.classList.remove("selected"));
  button.classList.add("selected");
  current = { path, method, op };
  $("operation").hidden = false;
  $("op-title").textContent = `${method.toUpperCase()} ${path}`;
  $("op-summary").textContent = op.summary || op.description || "";
  const params = $("params");
  params.replaceChildren();
  for (const p of op.parameters || []) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.dataset.name = p.name;
    input.dataset.in = p.in;
    input.value = p.schema && p.schema.enum ? p.schema.enum[0] ?? "" : "";
    label.append(`${p.name} (${p.in}${p.required ? ", required" : ""}) `, input);
    params.append(label);
  }
  const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  $("body-label").hidden = !body;
  $("body").value = body ? JSON.stringify(example(body.schema), null, 2) : "";
  $("response").textContent = "";
  $("status").textContent = "";
  $("curl").textContent = "";
}

async function send() {
  if (!current) return;
  let path = current.path;
  const query = new URLSearchParams();
  for (const input of $("params").querySelectorAll("input")) {
    if (input.dataset.in === "path") path = path.replace(`{${input.dataset.name}}`, encodeURIComponent(input.value));
    else if (input.dataset.in === "query" && input.value !== "") query.set(input.dataset.name, input.value);
  }
  const url = path + (query.toString() ? `?${query}` : "");
  const init = { method: current.method.toUpperCase(), headers: headers() };
  if (!$("body-label").hidden) init.body = $("body").value;
  const key = sessionStorage.getItem(KEY) ? " -H 'x-api-key: $MLOPS_API_KEY'" : "";
  const data = init.body ? ` -H 'content-type: application/json' -d '${init.body.replace(/\s+/g, " ")}'` : "";
  $("curl").textContent = `curl -X ${init.method} '${location.origin}${url}'${key}${data}`;
  const response = await fetch(url, init);
  $("status").textContent = `${response.status} ${response.statusText}`;
  const text = await response.text();
  try { $("response").textContent = JSON.stringify(JSON.parse(text), null, 2); }
  catch { $("response").textContent = text; }
}

document.addEventListener("DOMContentLoaded", () => {
  $("use-key").addEventListener("click", () => {
    const key = $("key").value.trim();
    if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
    $("key").value = "";
    load();
  });
  $("send").addEventListener("click", send);
  load();
});
