// The dashboard: polls the gateway's own API and draws it; management buttons call the
// same admin paths as any client. Every call carries the admin token as a Bearer header;
// the token lives in this tab's sessionStorage only (never a cookie).
"use strict";

const REFRESH_MS = 2000;
const HISTORY_SAMPLES = 180;
const TOKEN_KEY = "bis-admin-token";
const charts = {};

function $(id) { return document.getElementById(id); }

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(path, body) {
  const headers = token() ? {"Authorization": "Bearer " + token()} : {};
  const opts = {headers, cache: "no-store", credentials: "omit"};
  if (body !== undefined) {
    opts.method = "POST";
    headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  const data = await resp.json();
  if (resp.status === 401) {
    document.body.dataset.auth = "needed";
    throw new Error("the admin token is missing or wrong: enter it above");
  }
  if (!resp.ok) {
    throw new Error(data.ERROR || (resp.status + " " + resp.statusText));
  }
  document.body.dataset.auth = "ok";
  return data;
}

function useToken(event) {
  event.preventDefault();
  const value = $("token").value.trim();
  $("token").value = "";
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  refresh();
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  refresh();
}

function say(text, bad) {
  const el = $("message");
  el.textContent = text;
  el.className = bad ? "bad" : "";
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds);
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

async function act(label, path, body) {
  try {
    const data = await api(path, body);
    say(label + ": " + (data.RESULT || "done"));
  } catch (err) {
    say(label + " failed: " + err.message, true);
  }
  refresh();
}

function button(td, text, handler) {
  const b = document.createElement("button");
  b.textContent = text;
  b.addEventListener("click", handler);
  td.appendChild(b);
}

function actions(td, name, info) {
  if (info.kind !== "server") return;
  const sig = {SIGNATURE: name};
  if (["STOPPED", "FAILED", "CRASHLOOP"].includes(info.state)) {
    button(td, "start", () => act("start " + name, "start_server", sig));
    return;
  }
  button(td, "+1 worker", () => act(name + " workers", "update_workers",
                                   {SIGNATURE: name, NR_WORKERS: info.nr_workers + 1}));
  if (info.nr_workers > 1) {
    button(td, "\u22121 worker", () => act(name + " workers", "update_workers",
                                          {SIGNATURE: name, NR_WORKERS: info.nr_workers - 1}));
  }
  button(td, "reload", () => act("reload " + name, "reload_server", sig));
  button(td, "stop", () => act("stop " + name, "kill_server", sig));
}

// A version's share of its endpoint's traffic, as a percentage ("" without versions).
function share(name, info, traffic) {
  const policy = info.version ? traffic[name.split("@")[0]] : null;
  if (!policy) return "";
  const total = Object.values(policy.weights).reduce((a, b) => a + b, 0);
  const pct = Math.round(1000 * policy.weights[info.version] / total) / 10;
  return info.version + " " + pct + "%" + (policy.rollout ? " (rollout)" : "");
}

function drawEndpoints(servers, traffic) {
  const body = $("endpoints").tBodies[0];
  body.replaceChildren();
  for (const [name, info] of Object.entries(servers)) {
    const row = body.insertRow();
    row.dataset.endpoint = name;
    cell(row, name);
    cell(row, info.state, "state " + info.state);
    cell(row, share(name, info, traffic), "traffic");
    cell(row, info.kind === "server" ? info.workers_ready + " / " + info.nr_workers : info.kind,
         "workers");
    cell(row, info.port);
    cell(row, duration(info.uptime_s));
    cell(row, info.restarts);
    const last = info.last_error || (info.last_exit ? "last exit: " + info.last_exit.reason : "");
    cell(row, last, "error");
    actions(cell(row, ""), name, info);
  }
}

function drawAlerts(alerts) {
  const list = $("alerts");
  list.replaceChildren();
  if (!alerts.length) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = "none";
    list.appendChild(li);
  }
  for (const alert of alerts) {
    const li = document.createElement("li");
    li.className = alert.level;
    li.textContent = alert.level + ": " + alert.message;
    list.appendChild(li);
  }
}

function drawEvents(events) {
  const body = $("events").tBodies[0];
  body.replaceChildren();
  for (const e of events.slice(-15).reverse()) {
    const row = body.insertRow();
    cell(row, new Date(e.ts * 1000).toLocaleTimeString());
    cell(row, e.kind);
    const rest = Object.assign({}, e);
    delete rest.ts;
    delete rest.kind;
    cell(row, JSON.stringify(rest));
  }
}

// Charts over time: x is the sample's time (ms), so samples taken far apart (the gateway
// was down) stand far apart, and a line is not drawn across a gap of over 3 intervals.
const timeLabel = ms => new Date(ms).toLocaleTimeString();

function lineChart(id, datasets, gapMs) {
  if (!charts[id]) {
    charts[id] = new Chart($(id), {
      type: "line",
      data: {datasets: []},
      options: {animation: false, responsive: true, maintainAspectRatio: false,
                elements: {point: {radius: 0}}, interaction: {mode: "index", intersect: false},
                scales: {x: {type: "linear", ticks: {callback: timeLabel, maxTicksLimit: 8}},
                         y: {beginAtZero: true}},
                plugins: {tooltip: {callbacks: {title: items => items.length ? timeLabel(items[0].parsed.x) : ""}}}},
    });
  }
  const chart = charts[id];
  chart.data.datasets = datasets.map(d => Object.assign({spanGaps: gapMs}, d));
  chart.update();
}

function drawSystem(status) {
  const sys = status.system;
  const parts = [sys.mem_avail_gb + " of " + sys.mem_total_gb + " GB memory available",
                 "swap " + sys.swap_used_gb + " GB used",
                 "CPU " + sys.cpu_pct + " %"];
  if (sys.disk_free_gb !== null) {
    parts.push("disk " + sys.disk_free_gb + " of " + sys.disk_total_gb + " GB free");
  }
  $("system").textContent = parts.join(" \u00b7 ");
}

function drawCharts(samples, gpu) {
  const steps = samples.slice(1).map((s, i) => s.ts - samples[i].ts).sort((a, b) => a - b);
  const gapMs = steps.length ? 3000 * steps[Math.floor(steps.length / 2)] : false;
  const points = value => samples.map(s => ({x: s.ts * 1000, y: value(s)}));
  const mb = gb => (gb === null || gb === undefined ? null : Math.round(gb * 1024));
  // mem_gateway is the manager's whole tree: front, supervisor and every server in it.
  const series = {"gateway (whole tree)": points(s => mb(s.mem_gateway))};
  const names = new Set(samples.flatMap(s => Object.keys(s.mem_servers || {})));
  for (const name of names) {
    series[name] = points(s => mb((s.mem_servers || {})[name]));
  }
  lineChart("memory-chart",
            Object.entries(series).map(([label, data]) => ({label, data, borderWidth: 1.5})), gapMs);
  const status = $("gpu-status");
  if (!gpu.available) {
    status.textContent = gpu.reason;
    return;
  }
  status.textContent = "";
  const count = Math.max(0, ...samples.map(s => (s.gpu.gpus || []).length));
  const gpuSets = [];
  for (let i = 0; i < count; i++) {
    gpuSets.push({label: "GPU " + i + " used", borderWidth: 1.5,
                  data: points(s => ((s.gpu.gpus || [])[i] || {}).mem_used_gb ?? null)});
  }
  lineChart("gpu-chart", gpuSets, gapMs);
}

async function refresh() {
  try {
    const [servers, status, history] = await Promise.all([
      api("list_servers"), api("system_status"), api("history?samples=" + HISTORY_SAMPLES)]);
    $("server-name").textContent = servers.server ? "on " + servers.server : "";
    drawEndpoints(servers.SERVERS, servers.TRAFFIC || {});
    drawAlerts(status.SYSTEM_ALERTS);
    drawSystem(status.SYSTEM_STATUS);
    drawEvents(history.events);
    drawCharts(history.samples, status.SYSTEM_STATUS.gpu);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "true";
  } catch (err) {
    $("updated").textContent = "update failed: " + err.message;
    if (document.body.dataset.auth === "needed") {
      $("endpoints").tBodies[0].replaceChildren();  // no stale buttons without a token
    }
  }
}

$("token-form").addEventListener("submit", useToken);
$("forget").addEventListener("click", forgetToken);
refresh();
setInterval(refresh, REFRESH_MS);
