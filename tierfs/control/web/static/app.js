// The tierfs web GUI. Names come from file systems: they only ever reach the page as
// text nodes (textContent, option values), never as markup.
"use strict";

const $ = (sel) => document.querySelector(sel);
let status = null;
let jobs = [];
let pools = null; // null while the daemon has no pools API: its tiers are shown instead
const chosenTier = new Map(); // kept across the table's re-renders

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function button(label, onClick, cls) {
  const b = el("button", label, cls);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function ago(t) {
  if (!t) return "never";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return new Date(t * 1000).toLocaleString();
}

function say(text) { $("#message").textContent = text || ""; }

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { "X-Tierfs-Request": "1" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const error = new Error((data && data.error) || response.status + " " + response.statusText);
    error.status = response.status;
    throw error;
  }
  return data;
}

async function act(what, fn) {
  say("");
  try { return await fn(); } catch (e) { say(what + ": " + e.message); return null; }
}

// Models ---------------------------------------------------------------------------

function progressCell(cell, job) {
  cell.replaceChildren();
  if (!job) return;
  const bar = el("progress");
  bar.max = job.bytes_total || 1;
  bar.value = job.bytes_done;
  const rate = (job.rate / 1e9).toFixed(2) + " GB/s";
  const eta = job.eta_s === null ? "" : " · ETA " + Math.ceil(job.eta_s) + " s";
  cell.append(bar, el("span", " " + bytes(job.bytes_done) + " / " + bytes(job.bytes_total) +
    " · " + rate + eta, "progress-text"));
}

function activeJob(model) {
  return jobs.find((j) => j.model === model && (j.state === "queued" || j.state === "running"));
}

function renderModels() {
  const body = $("#models tbody");
  const tiers = status.tiers.map((t) => t.name);
  body.replaceChildren(...status.models.map((m) => {
    const row = el("tr");
    row.dataset.model = m.name;
    const job = activeJob(m.name);
    const state = job ? "promoting" : m.state;
    const name = el("td", m.name, "name");
    if (m.cold_reason) name.title = m.cold_reason;
    const transfer = el("td", null, "transfer");
    progressCell(transfer, job);
    const actions = el("td");
    const choice = el("select");
    choice.className = "tier-choice";
    choice.append(el("option", "fastest tier that fits"));
    choice.options[0].value = "";
    for (const t of tiers) { const o = el("option", t); o.value = t; choice.append(o); }
    choice.value = chosenTier.get(m.name) || "";
    choice.addEventListener("change", () => chosenTier.set(m.name, choice.value));
    const tier = () => choice.value || null;
    actions.append(
      choice,
      button("Promote", () => act("promote", async () => {
        const started = await api("POST", "/api/promote", { model: m.name, tier: tier() });
        if (started) upsertJob(started);
      }), "promote"),
      button("Demote", () => act("demote", async () => {
        await api("POST", "/api/demote", { model: m.name });
        await refresh();
      }), "demote"),
      m.pinned
        ? button("Unpin", () => act("unpin", async () => {
          await api("POST", "/api/unpin", { model: m.name });
          await refresh();
        }), "unpin")
        : button("Pin", () => act("pin", async () => {
          await api("POST", "/api/pin", { model: m.name, tier: tier() });
          await refresh();
        }), "pin"),
    );
    row.append(
      name,
      el("td", m.kind),
      el("td", bytes(m.size)),
      el("td", state, "state state-" + state),
      el("td", m.tiers.join(", ") || "cold"),
      el("td", m.pinned ? "pinned" + (m.pin_tier ? " to " + m.pin_tier : "") : ""),
      el("td", ago(m.last_access)),
      transfer,
      actions,
    );
    return row;
  }));
}

function upsertJob(job) {
  jobs = jobs.filter((j) => j.id !== job.id).concat([job]);
  onJobs();
}

function onJobs() {
  if (!status) return;
  for (const row of document.querySelectorAll("#models tbody tr")) {
    const job = activeJob(row.dataset.model);
    progressCell(row.querySelector("td.transfer"), job);
    const model = status.models.find((m) => m.name === row.dataset.model);
    const stateCell = row.querySelector("td.state");
    const state = job ? "promoting" : (model ? model.state : "");
    stateCell.textContent = state;
    stateCell.className = "state state-" + state;
  }
}

// Pools ----------------------------------------------------------------------------

function renderPools() {
  const body = $("#pools tbody");
  const rows = pools || status.tiers.map((t) => ({
    name: t.name, kind: t.kind, size: t.size, used: t.used, free: t.free,
    state: t.mounted ? "connected" : "disconnected",
  }));
  $("#pools-note").textContent = pools ? "" :
    "This daemon has no pools API yet: its tiers are shown, and the buttons answer with its error.";
  body.replaceChildren(...rows.map((p) => {
    const row = el("tr");
    row.dataset.pool = p.name;
    const size = el("input");
    size.className = "resize-size";
    size.placeholder = "e.g. 8G";
    size.size = 6;
    const actions = el("td");
    actions.append(
      button("Connect", () => poolAction(p.name, "connect"), "connect"),
      button("Disconnect", () => poolAction(p.name, "disconnect"), "disconnect"),
      size,
      button("Resize", () => poolAction(p.name, "resize", { size: size.value.trim() }), "resize"),
    );
    row.append(
      el("td", p.name, "name"), el("td", p.kind), el("td", bytes(p.size)),
      el("td", bytes(p.used)), el("td", bytes(p.free)),
      el("td", p.state + (p.error ? ": " + p.error : ""), "state state-" + p.state), actions,
    );
    return row;
  }));
}

function renderSteps(op) {
  const list = $("#pool-steps");
  list.replaceChildren(el("li", op.action + " " + op.pool + ": " + op.state +
    (op.error ? " (" + op.error + ")" : "")));
  for (const s of op.steps || []) {
    list.append(el("li", s.name + ": " + s.state + (s.detail ? " (" + s.detail + ")" : "")));
  }
}

async function poolAction(name, action, body) {
  const path = "/api/pools/" + encodeURIComponent(name) + "/" + action;
  const answer = await act(action, () => api("POST", path, body || {}));
  if (!answer) return;
  let op = answer.operation;
  renderSteps(op);
  while (op.state === "running") {
    await new Promise((r) => setTimeout(r, 300));
    const next = await act(action, () => api("GET", "/api/pools/operations/" + op.id));
    if (!next) return;
    op = next.operation;
    renderSteps(op);
  }
  await refresh();
}

// Health ---------------------------------------------------------------------------

async function fsck(deep) {
  $("#fsck-summary").textContent = deep ? "deep fsck running…" : "fsck running…";
  $("#fsck-findings").replaceChildren();
  const report = await act("fsck", () => api("POST", "/api/fsck", { deep }));
  if (!report) { $("#fsck-summary").textContent = ""; return; }
  const verdict = report.clean ? "clean" : report.findings.length + " problem(s) found and repaired";
  const hashed = deep ? ", " + bytes(report.bytes_hashed) + " re-hashed" : "";
  $("#fsck-summary").textContent = "fsck: " + verdict + "; " + report.replicas_checked +
    " hot copies checked" + hashed + ".";
  $("#fsck-findings").replaceChildren(...report.findings.map((f) =>
    el("li", f.path + ": " + f.problem + " (" + f.action + ")")));
}

// Settings -------------------------------------------------------------------------

function showSettings(s) {
  const form = $("#settings");
  form.strategy.value = s.strategy;
  form.high_watermark.value = s.high_watermark;
  form.low_watermark.value = s.low_watermark;
  form.promote_on_open.checked = s.promote_on_open;
  $("#strategy").textContent = s.strategy;
}

async function saveSettings(event) {
  event.preventDefault();
  const form = $("#settings");
  const body = {
    strategy: form.strategy.value,
    high_watermark: Number(form.high_watermark.value),
    low_watermark: Number(form.low_watermark.value),
    promote_on_open: form.promote_on_open.checked,
  };
  const result = $("#settings-result");
  try {
    const s = await api("POST", "/api/settings", body);
    showSettings(s);
    result.className = "";
    result.textContent = "Applied" + (s.saved_to ? " and saved to " + s.saved_to : " (not saved: no config file)") + ".";
  } catch (e) {
    result.className = "state-failed";
    result.textContent = e.message;
  }
}

// Wiring ---------------------------------------------------------------------------

async function refresh() {
  const next = await act("status", () => api("GET", "/api/status"));
  if (!next) return;
  status = next;
  jobs = status.jobs;
  $("#mountpoint").textContent = status.mountpoint;
  try {
    pools = (await api("GET", "/api/pools")).pools;
  } catch (e) {
    if (e.status !== 404) say("pools: " + e.message);
    pools = null;
  }
  renderModels();
  renderPools();
}

function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.classList.toggle("active", tab.dataset.panel === name);
  }
  for (const panel of document.querySelectorAll(".panel")) {
    panel.hidden = panel.id !== "panel-" + name;
  }
  history.replaceState(null, "", "#" + name);
}

function listen() {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => { $("#live").textContent = "live"; });
  source.addEventListener("error", () => { $("#live").textContent = "reconnecting…"; });
  source.addEventListener("jobs", (event) => {
    const before = new Set(jobs.filter((j) => j.state === "queued" || j.state === "running").map((j) => j.id));
    jobs = JSON.parse(event.data).jobs;
    onJobs();
    // A job that just ended changes its model's state and tiers: fetch them.
    if (jobs.some((j) => before.has(j.id) && j.state !== "queued" && j.state !== "running")) refresh();
  });
}

document.addEventListener("DOMContentLoaded", async () => {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => showTab(tab.dataset.panel));
  }
  $("#fsck").addEventListener("click", () => fsck(false));
  $("#fsck-deep").addEventListener("click", () => fsck(true));
  $("#settings").addEventListener("submit", saveSettings);
  showTab(["models", "pools", "health", "settings"].includes(location.hash.slice(1)) ? location.hash.slice(1) : "models");
  const s = await act("settings", () => api("GET", "/api/settings"));
  if (s) showSettings(s);
  await refresh();
  listen();
  setInterval(refresh, 5000);
});
