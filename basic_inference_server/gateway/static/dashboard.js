// The dashboard: draws the gateway's live state, read from one stream (GET
// dashboard/events, Server-Sent Events: docs/operations.md#dashboard); its buttons call
// the same admin paths as any client. Every call carries the admin token as a Bearer
// header; the token lives in this tab's sessionStorage only (never a cookie, never a URL).
//
// The stream is read with fetch(), not EventSource: EventSource cannot send a header, so
// the token would have to travel in the URL or a cookie. Nor is a library used to parse
// it: the page runs only its own files (its CSP), and what this stream sends of the SSE
// format (id, event and data lines; comments) takes a few lines, where a library would
// be one more vendored file to keep up to date.
"use strict";

const SAMPLES = 180;  // the charts' window (as the gateway sends at first)
const EVENTS = 100;
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30000;
const TOKEN_KEY = "bis-admin-token";
const charts = {};
const live = {controller: null, lastId: "", retryMs: RETRY_MIN_MS, timer: null,
              state: null, samples: [], events: [], sampled: false};

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
  connect(true);
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  disconnect();
  needToken();
}

// No token, or a wrong one: say so, and show no stale data or buttons.
function needToken() {
  document.body.dataset.auth = "needed";
  $("updated").textContent = "the admin token is missing or wrong: enter it above";
  $("endpoints").tBodies[0].replaceChildren();
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

// Each tenant's share of the endpoint's requests started lately (FAIR_QUEUEING), largest first.
function tenantShares(name, shares) {
  const mine = shares[name];
  if (!mine) return "";
  return Object.entries(mine).filter(([, s]) => s.STARTED > 0)
    .sort((a, b) => b[1].SHARE - a[1].SHARE || (a[0] < b[0] ? -1 : 1))
    .map(([tenant, s]) => tenant + " " + Math.round(1000 * s.SHARE) / 10 + "%").join(" \u00b7 ");
}

function drawEndpoints(servers, traffic, shares) {
  const body = $("endpoints").tBodies[0];
  body.replaceChildren();
  for (const [name, info] of Object.entries(servers)) {
    const row = body.insertRow();
    row.dataset.endpoint = name;
    cell(row, name);
    cell(row, info.state, "state " + info.state);
    cell(row, share(name, info, traffic), "traffic");
    cell(row, tenantShares(name, shares), "tenants");
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

// A quantile of the answers counted in latency buckets (bounds in s, counts at or under
// each, then all), interpolated within its bucket as Prometheus' histogram_quantile does;
// in ms. Past the last finite bound: that bound.
function quantile(q, le, counts) {
  const total = counts[counts.length - 1];
  if (!total) return null;
  const rank = q * total;
  let bound = 0, below = 0;
  for (let i = 0; i < le.length; i++) {
    if (counts[i] >= rank) {
      const inside = counts[i] - below;
      return 1000 * (bound + (le[i] - bound) * (inside ? (rank - below) / inside : 1));
    }
    bound = le[i];
    below = counts[i];
  }
  return 1000 * bound;
}

// Request rate, 5xx rate and latency per endpoint and version, from the totals each
// sample carries: a point is the difference between two samples over their time apart.
// A total lower than the one before is a front restart (its counts start over): no
// point there. Only the endpoints that run are drawn (and in the legend).
function drawTraffic(samples, running, gapMs) {
  const series = {rate: {}, errors: {}, latency: {}};
  for (const name of running) {
    series.rate[name] = [];
    series.errors[name] = [];
    series.latency[name + " p50"] = [];
    series.latency[name + " p99"] = [];
  }
  for (let i = 1; i < samples.length; i++) {
    const before = samples[i - 1].traffic, after = samples[i].traffic;
    const x = samples[i].ts * 1000, dt = samples[i].ts - samples[i - 1].ts;
    for (const name of running) {
      const a = (before || {})[name] || {requests: 0, errors: 0, counts: []};
      const b = (after || {})[name];
      let rate = null, errors = null, p50 = null, p99 = null;
      if (before && b && dt > 0 && b.requests >= a.requests) {
        rate = (b.requests - a.requests) / dt;
        errors = (b.errors - a.errors) / dt;
        const counts = b.counts.map((c, j) => c - (a.counts[j] || 0));
        p50 = quantile(0.5, b.le, counts);
        p99 = quantile(0.99, b.le, counts);
      }
      series.rate[name].push({x, y: rate});
      series.errors[name].push({x, y: errors});
      series.latency[name + " p50"].push({x, y: p50});
      series.latency[name + " p99"].push({x, y: p99});
    }
  }
  const sets = byLabel => Object.entries(byLabel).map(([label, data]) => ({label, data, borderWidth: 1.5}));
  lineChart("rate-chart", sets(series.rate), gapMs);
  lineChart("error-chart", sets(series.errors), gapMs);
  lineChart("latency-chart", sets(series.latency), gapMs);
}

function drawCharts(samples, gpu, servers) {
  const steps = samples.slice(1).map((s, i) => s.ts - samples[i].ts).sort((a, b) => a - b);
  const gapMs = steps.length ? 3000 * steps[Math.floor(steps.length / 2)] : false;
  const running = Object.keys(servers).filter(name => servers[name].state !== "STOPPED").sort();
  drawTraffic(samples, running, gapMs);
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

// -- the live stream ------------------------------------------------------------------

// Reads Server-Sent Events from a response body: onEvent(name, data, id) for each event,
// onEvent(null) for a comment (the gateway's keepalive). The gateway ends lines with
// "\n" only; "\r\n" is taken too.
async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true}).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message", id = null;
      const data = [];
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") data.push(text);
        else if (field === "event") name = text;
        else if (field === "id") id = text;
      }
      if (data.length) onEvent(name, data.join("\n"), id);
      else onEvent(null);
    }
  }
}

function drawState(state) {
  if (state.ERROR) return;  // the manager does not answer: the last drawing stays
  $("server-name").textContent = state.server ? "on " + state.server : "";
  drawEndpoints(state.SERVERS || {}, state.TRAFFIC || {}, state.FAIR_SHARES || {});
  drawAlerts(state.SYSTEM_ALERTS || []);
  if (state.SYSTEM_STATUS) drawSystem(state.SYSTEM_STATUS);
  else $("system").textContent = state.SYSTEM_ERROR || "";
}

function onEvent(name, data, id) {
  if (name === "state") {
    live.state = JSON.parse(data);
    drawState(live.state);
  } else if (name === "samples") {
    live.samples = live.samples.concat(JSON.parse(data).samples).slice(-SAMPLES);
    live.sampled = true;
  } else if (name === "events") {
    live.events = live.events.concat(JSON.parse(data).events).slice(-EVENTS);
    drawEvents(live.events);
  }
  if (name === "state" || name === "samples") {
    const status = (live.state || {}).SYSTEM_STATUS;
    if (status && live.sampled) drawCharts(live.samples, status.gpu, live.state.SERVERS || {});
  }
  if (id) live.lastId = id;
  if (name) live.retryMs = RETRY_MIN_MS;  // the stream works: the next drop retries soon
  const error = (live.state || {}).ERROR;
  $("updated").textContent = error ? "update failed: " + error
    : "live \u00b7 " + new Date().toLocaleTimeString();
  if (live.state && live.sampled) document.body.dataset.loaded = "true";
}

// What the stream sent so far: the next stream starts from nothing.
function forgetEvents() {
  Object.assign(live, {lastId: "", state: null, samples: [], events: [], sampled: false});
}

function disconnect() {
  clearTimeout(live.timer);
  if (live.controller) live.controller.abort();
  live.controller = null;
}

// Open the stream; after a drop, open it again with Last-Event-ID (the gateway sends only
// what changed since), waiting longer after each failure. fresh: forget what was drawn.
async function connect(fresh) {
  disconnect();
  if (fresh) {
    forgetEvents();
    live.retryMs = RETRY_MIN_MS;
  }
  if (!token()) {
    needToken();
    return;
  }
  const controller = new AbortController();
  live.controller = controller;
  const headers = {"Authorization": "Bearer " + token(), "Accept": "text/event-stream"};
  if (live.lastId) headers["Last-Event-ID"] = live.lastId;
  let reason = "the stream ended";
  try {
    const resp = await fetch("dashboard/events", {headers, cache: "no-store",
                                                  credentials: "omit", signal: controller.signal});
    if (resp.status === 401) {
      live.controller = null;
      needToken();
      return;
    }
    if (!resp.ok) {
      const data = await resp.json().catch(() => ({}));
      if (resp.status === 400) forgetEvents();  // a cursor the gateway cannot read
      throw new Error(data.ERROR || (resp.status + " " + resp.statusText));
    }
    document.body.dataset.auth = "ok";
    await readEvents(resp.body, onEvent);
  } catch (err) {
    reason = err.message;
  }
  if (live.controller !== controller) return;  // given up on purpose (a new token, forget)
  const wait = live.retryMs;
  live.retryMs = Math.min(RETRY_MAX_MS, live.retryMs * 2);
  $("updated").textContent = "reconnecting in " + Math.round(wait / 1000) + " s: " + reason;
  live.timer = setTimeout(() => connect(false), wait);
}

$("token-form").addEventListener("submit", useToken);
$("forget").addEventListener("click", forgetToken);
connect(true);
