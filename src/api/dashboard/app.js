// Cairn's dashboard: plain JavaScript over the node's own HTTP API (/v1/nodes,
// /v1/shards, /v1/tables, /v1/timeline, /v1/events, /v1/sql, /v1/ws, and /v1/dev/... in a
// `cairn dev` cluster); charts drawn by uPlot (vendored).
"use strict";

const $ = (selector) => document.querySelector(selector);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const error = (body && body.error) || { code: String(response.status), message: response.statusText };
    throw error;
  }
  return body;
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  if (n < 1073741824) return (n / 1048576).toFixed(1) + " MiB";
  return (n / 1073741824).toFixed(2) + " GiB";
}

function duration(ms) {
  if (ms === null || ms === undefined || ms < 0) return "";
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}

// --- Pages (the URL's #fragment names the page).
const pages = ["overview", "shards", "tables", "charts", "events", "sql", "live", "files"];
function show() {
  const name = (location.hash || "#overview").slice(1).split("?")[0];
  const page = pages.includes(name) ? name : "overview";
  for (const p of pages) {
    $("#page-" + p).classList.toggle("active", p === page);
  }
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.page === page);
  }
  refresh();
}
window.addEventListener("hashchange", show);

// --- Overview and shards: refreshed every second.
let shardsCache = [];
let sortKey = "shard";
let sortUp = true;

function shardRows(shards) {
  return shards.map((s) => {
    const state = s.replica_state || [];
    const voters = state.filter((r) => r.role === "leader" || r.role === "follower").length;
    const lags = state.map((r) => r.lag).filter((l) => l !== null && l !== undefined);
    const lagsMs = state.map((r) => r.lag_ms).filter((l) => l !== null && l !== undefined);
    const leader = state.find((r) => r.role === "leader");
    let health = "ok";
    if (!s.leader) health = "no leader";
    else if (voters < s.replication_factor) health = "under-replicated (" + voters + "/" + s.replication_factor + ")";
    else if ((s.leaving || []).length) health = "moving";
    return {
      shard: s.shard,
      tables: (s.tables || []).join(", "),
      holds: s.holds || "",
      leader: s.leader || "",
      replicas: state.map((r) => r.node + (r.role === "leader" ? "*" : r.role === "learner" ? "(learner)" : r.role === "unknown" ? "?" : "")).join(" "),
      term: s.term ?? "",
      applied: leader && leader.applied_index !== null ? leader.applied_index : "",
      lag: lags.length ? Math.max(...lags) : "",
      lag_ms: lagsMs.length ? Math.max(...lagsMs) : "",
      size: s.bytes ?? "",
      rf: s.replication_factor,
      health,
    };
  });
}

function drawShards() {
  const filter = $("#shard-filter").value.trim().toLowerCase();
  const rows = shardRows(shardsCache).filter((r) =>
    !filter || Object.values(r).some((v) => String(v).toLowerCase().includes(filter)));
  rows.sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    const c = (typeof x === "number" && typeof y === "number") ? x - y
      : String(x).localeCompare(String(y), undefined, { numeric: true });
    return sortUp ? c : -c;
  });
  const body = $("#shards tbody");
  body.replaceChildren();
  for (const r of rows) {
    const tr = el("tr");
    tr.dataset.shard = r.shard;
    for (const key of ["shard", "tables", "holds", "leader", "replicas", "term", "applied", "lag", "lag_ms", "size", "rf", "health"]) {
      const text = key === "size" ? bytes(r.size === "" ? null : r.size) : r[key];
      const cls = key === "health" ? (r.health === "ok" ? "ok" : "bad")
        : (["term", "applied", "lag", "lag_ms", "size", "rf"].includes(key) ? "num" : "");
      tr.append(el("td", text, cls));
    }
    body.append(tr);
  }
}

for (const th of document.querySelectorAll("#shards th")) {
  th.addEventListener("click", () => {
    if (sortKey === th.dataset.key) sortUp = !sortUp; else { sortKey = th.dataset.key; sortUp = true; }
    drawShards();
  });
}
$("#shard-filter").addEventListener("input", drawShards);

let devMode = false;

async function fault(action, node, from) {
  $("#fault-message").textContent = action + (node ? " " + node : "") + "…";
  try {
    const body = { };
    if (node) body.node = node;
    if (from) body.from = from;
    const answer = await api("/v1/dev/" + action, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    $("#fault-message").textContent = answer.message;
  } catch (e) {
    $("#fault-message").textContent = "refused: " + e.message + " (" + e.code + ")";
  }
  refresh();
}
$("#heal").addEventListener("click", () => fault("heal"));

// CPU use between two refreshes, from each node's CPU seconds.
const lastCpu = {};
function cpuPercent(n, now) {
  if (n.cpu_seconds === null || n.cpu_seconds === undefined) return "";
  const last = lastCpu[n.id];
  lastCpu[n.id] = { at: now, cpu: n.cpu_seconds };
  if (!last || now <= last.at || n.cpu_seconds < last.cpu) return "…";
  return (100 * (n.cpu_seconds - last.cpu) / ((now - last.at) / 1000)).toFixed(0) + "%";
}

function drawNodes(nodes) {
  const body = $("#nodes tbody");
  body.replaceChildren();
  const now = Date.now();
  for (const n of nodes) {
    const tr = el("tr");
    tr.dataset.node = n.id;
    const live = n.liveness || "";
    tr.append(el("td", n.id), el("td", n.state), el("td", live, live === "alive" ? "ok" : "bad"),
      el("td", n.zone || ""), el("td", n.replicas, "num"),
      el("td", (n.leaders ?? "") + (n.leads_meta ? " +meta" : ""), "num"),
      el("td", cpuPercent(n, now), "num"),
      el("td", n.rss_bytes ? (n.rss_bytes / 1048576).toFixed(0) + " MiB" : "", "num"),
      el("td", n.started_ms ? duration(now - n.started_ms) : ""), el("td", n.version || ""),
      el("td", n.pg_addr), el("td", n.http_addr));
    const buttons = el("td", null, "dev");
    for (const action of ["crash", "restart", "pause", "resume", "partition"]) {
      const b = el("button", action);
      b.dataset.action = action;
      b.addEventListener("click", () => fault(action, n.id));
      buttons.append(b);
    }
    tr.append(buttons);
    body.append(tr);
  }
}

function drawHealth(nodes, shards) {
  const alerts = [];
  for (const n of nodes) {
    if (n.liveness !== "alive") alerts.push("node " + n.id + " is " + n.liveness);
    for (const why of n.stuck || []) alerts.push("node " + n.id + ": " + why);
    if (n.divergent_replicas) alerts.push("node " + n.id + " found " + n.divergent_replicas + " divergent replica(s) (see Events)");
  }
  for (const r of shardRows(shards)) {
    if (r.health !== "ok" && r.health !== "moving") alerts.push("shard " + r.shard + ": " + r.health);
  }
  const box = $("#alerts");
  box.replaceChildren(...alerts.map((a) => el("div", a, "alert")));
  const health = $("#health");
  health.textContent = alerts.length ? alerts.length + " alert" + (alerts.length > 1 ? "s" : "") : "healthy";
  health.className = "health " + (alerts.length ? "bad" : "ok");
}

// One refresh at a time: on a busy cluster an answer can take longer than the tick, and
// overlapping refreshes would only add to the load they wait on. A refresh asked for while
// one runs (a page switch) runs right after it.
let refreshing = null;
let refreshAgain = false;
function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = refreshOnce().finally(() => {
    refreshing = null;
    if (refreshAgain) { refreshAgain = false; refresh(); }
  });
  return refreshing;
}

let lastNodes = null;
async function refreshOnce() {
  try {
    // Everything the page shows is asked for at once; the charts need the nodes' ids,
    // known from the last refresh after the first.
    const active = (page) => $("#page-" + page).classList.contains("active");
    const [nodes, shards, tables, events] = await Promise.all([
      api("/v1/nodes"), api("/v1/shards"),
      active("tables") ? api("/v1/tables") : null,
      active("events") ? api("/v1/events") : null,
      active("charts") && lastNodes ? refreshCharts(lastNodes) : null,
    ]);
    lastNodes = nodes.nodes;
    shardsCache = shards.shards;
    drawNodes(nodes.nodes);
    drawShards();
    drawHealth(nodes.nodes, shards.shards);
    if (tables) {
      const leaderOf = {};
      for (const s of shards.shards) leaderOf[s.shard] = s.leader || "?";
      const body = $("#tables tbody");
      body.replaceChildren();
      for (const t of tables.tables) {
        const tr = el("tr");
        tr.dataset.table = t.name;
        const leaders = {};
        for (const s of t.shards) leaders[leaderOf[s]] = (leaders[leaderOf[s]] || 0) + 1;
        tr.append(el("td", t.name), el("td", t.distribution), el("td", t.colocation, "num"),
          el("td", t.shards.length, "num"), el("td", t.replication_factors.join(", "), "num"),
          el("td", Object.entries(leaders).sort().map(([n, c]) => n + ": " + c).join(", ")),
          el("td", t.columns.join(", ")),
          el("td", t.approximate_rows ?? "…", "num"), el("td", bytes(t.approximate_bytes) || "…", "num"));
        body.append(tr);
      }
    }
    if (active("charts") && !charts["chart-statements"]) {
      await refreshCharts(nodes.nodes);
    }
    if (events) {
      const body = $("#events tbody");
      body.replaceChildren();
      for (const e of events.events.slice().reverse()) {
        const tr = el("tr");
        body.append(tr);
        tr.append(el("td", new Date(e.at_ms).toLocaleTimeString()), el("td", e.node), el("td", e.kind), el("td", e.message));
      }
    }
  } catch (e) {
    const health = $("#health");
    health.textContent = "this node does not answer: " + (e.message || e);
    health.className = "health bad";
  }
}

// --- Charts: every node's last 15 minutes at one point a second (`/v1/timeline`), merged
// here: rates are summed, latency histograms are added before their quantiles are taken.
const KINDS = ["read", "write", "ddl", "other"];
const WINDOW_S = 900;
const timelines = {}; // node id -> Map(second -> sample)
const charts = {};

function quantile(buckets, q) {
  let total = 0;
  for (const c of buckets.values()) total += c;
  if (!total) return null;
  const rank = Math.max(1, Math.ceil(total * q));
  let seen = 0;
  for (const i of [...buckets.keys()].sort((a, b) => a - b)) {
    seen += buckets.get(i);
    if (seen >= rank) return Math.pow(2, (i + 1) / 4) / 1000;
  }
  return null;
}

function addBuckets(into, sparse) {
  for (const [i, c] of sparse) into.set(i, (into.get(i) || 0) + c);
}

async function fetchTimeline(node) {
  const kept = timelines[node] || (timelines[node] = new Map());
  let since = 0;
  for (const t of kept.keys()) since = Math.max(since, t);
  const answer = await api("/v1/timeline?node=" + node + (since ? "&since_ms=" + since : ""));
  for (const s of answer.seconds) kept.set(s.at_ms, s);
  const oldest = Date.now() - (WINDOW_S + 5) * 1000;
  for (const t of [...kept.keys()]) if (t < oldest) kept.delete(t);
}

// Latencies (`log`) are drawn on a log scale, with a dot for each second that has one.
function chart(id, title, series, yLabel, log) {
  if (charts[id]) return charts[id];
  const width = Math.max(400, Math.min(1100, $("#page-charts").clientWidth - 20));
  const opts = {
    title, width, height: 220,
    scales: { x: { time: true }, y: log ? { distr: 3 } : {} },
    axes: [{}, { label: yLabel, size: 60 }],
    series: [{}, ...series.map((s) => ({
      label: s.label, stroke: s.color, width: 1.5, dash: s.dash, spanGaps: false,
      points: log ? { show: true, size: 4 } : undefined,
    }))],
  };
  charts[id] = new uPlot(opts, [[], ...series.map(() => [])], $("#" + id));
  return charts[id];
}

async function refreshCharts(nodes) {
  const select = $("#chart-node");
  const ids = nodes.map((n) => n.id);
  for (const id of ids) {
    if (![...select.options].some((o) => o.value === id)) select.append(new Option(id, id));
  }
  const chosen = select.value ? [select.value] : ids;
  const answered = await Promise.all(chosen.map((id) => fetchTimeline(id).then(() => true, () => false)));
  const missing = chosen.filter((_, i) => !answered[i]);
  $("#chart-status").textContent = missing.length ? "no answer from " + missing.join(", ") : "";
  // One x per second across the window; a node's sample falls in the second it ended in.
  const end = Math.floor(Date.now() / 1000) - 1;
  const xs = [];
  for (let t = end - WINDOW_S + 1; t <= end; t++) xs.push(t);
  const at = new Map(xs.map((t, i) => [t, i]));
  const n = xs.length;
  const zeros = () => new Array(n).fill(null);
  const rate = KINDS.map(zeros), errors = zeros(), proposals = zeros(), fsyncs = zeros();
  const lat = KINDS.map(() => xs.map(() => new Map()));
  const fsyncLat = xs.map(() => new Map());
  let total = 0;
  for (const id of chosen) {
    for (const s of (timelines[id] || new Map()).values()) {
      const i = at.get(Math.floor(s.at_ms / 1000));
      if (i === undefined) continue;
      KINDS.forEach((_, k) => { rate[k][i] = (rate[k][i] || 0) + s.statements[k]; addBuckets(lat[k][i], s.latency[k]); });
      total += s.statements.reduce((a, b) => a + b, 0);
      errors[i] = (errors[i] || 0) + s.errors;
      proposals[i] = (proposals[i] || 0) + s.proposals;
      let count = 0;
      for (const [, c] of s.fsyncs) count += c;
      fsyncs[i] = (fsyncs[i] || 0) + count;
      addBuckets(fsyncLat[i], s.fsyncs);
    }
  }
  const colors = { read: "#1e88e5", write: "#e53935", ddl: "#8e24aa", other: "#757575" };
  chart("chart-statements", "Statements per second", [
    ...KINDS.map((k) => ({ label: k, color: colors[k] })), { label: "errors", color: "#ff6f00", dash: [4, 4] },
  ], "per s").setData([xs, ...rate, errors]);
  const latSeries = [], latData = [];
  for (const [k, kind] of KINDS.entries()) {
    for (const [q, dash] of [[0.5, undefined], [0.99, [4, 4]]]) {
      latSeries.push({ label: kind + " p" + Math.round(q * 100), color: colors[kind], dash });
      latData.push(lat[k].map((b) => quantile(b, q)));
    }
  }
  chart("chart-latency", "Statement latency", latSeries, "ms", true).setData([xs, ...latData]);
  chart("chart-raft", "Raft proposals and log fsyncs per second", [
    { label: "proposals", color: "#00897b" }, { label: "fsyncs", color: "#6d4c41" },
  ], "per s").setData([xs, proposals, fsyncs]);
  chart("chart-fsync", "Log fsync latency", [
    { label: "p50", color: "#6d4c41" }, { label: "p99", color: "#6d4c41", dash: [4, 4] },
  ], "ms", true).setData([xs, fsyncLat.map((b) => quantile(b, 0.5)), fsyncLat.map((b) => quantile(b, 0.99))]);
  // For tests and the curious: what the charts hold.
  const box = $("#chart-statements");
  box.dataset.statements = total;
  box.dataset.proposals = proposals.reduce((a, b) => a + (b || 0), 0);
  box.dataset.fsyncs = fsyncs.reduce((a, b) => a + (b || 0), 0);
  box.dataset.nodes = chosen.filter((_, i) => answered[i]).join(",");
}
$("#chart-node").addEventListener("change", refresh);

async function detectDev() {
  try {
    await api("/v1/dev/links");
    devMode = true;
  } catch (_) {
    devMode = false;
  }
  document.body.classList.toggle("dev-mode", devMode);
}

// --- SQL console.
const history = JSON.parse(localStorage.getItem("cairn.sql.history") || "[]");
function drawHistory() {
  const list = $("#sql-history");
  list.replaceChildren(...history.slice(0, 20).map((q) => {
    const li = el("li", q);
    li.addEventListener("click", () => { $("#sql-text").value = q; });
    return li;
  }));
}

async function runSql() {
  const sql = $("#sql-text").value.trim();
  if (!sql) return;
  $("#sql-error").textContent = "";
  $("#sql-status").textContent = "running…";
  const head = $("#sql-result thead"), body = $("#sql-result tbody");
  head.replaceChildren();
  body.replaceChildren();
  const started = performance.now();
  try {
    const answer = await api("/v1/sql", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ sql }),
    });
    const tr = el("tr");
    for (const c of answer.columns) tr.append(el("th", c));
    head.append(tr);
    for (const row of answer.rows) {
      const r = el("tr");
      for (const v of row) r.append(el("td", v === null ? "NULL" : typeof v === "object" ? JSON.stringify(v) : v));
      body.append(r);
    }
    $("#sql-status").textContent = answer.tag + " — " + (performance.now() - started).toFixed(1) + " ms";
  } catch (e) {
    $("#sql-status").textContent = "";
    $("#sql-error").textContent = "ERROR " + e.code + ": " + e.message;
  }
  const i = history.indexOf(sql);
  if (i >= 0) history.splice(i, 1);
  history.unshift(sql);
  localStorage.setItem("cairn.sql.history", JSON.stringify(history.slice(0, 50)));
  drawHistory();
}
$("#sql-run").addEventListener("click", runSql);
$("#sql-text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); runSql(); }
});

// --- Live changes over the WebSocket.
let socket = null;
function stopLive() {
  if (socket) { socket.close(); socket = null; }
  $("#live-status").textContent = "stopped";
}
function startLive() {
  stopLive();
  const kind = $("#live-kind").value, target = $("#live-target").value.trim();
  if (!target) return;
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  socket = new WebSocket(scheme + location.host + "/v1/ws");
  socket.addEventListener("open", () => {
    const what = {};
    what[kind] = target;
    socket.send(JSON.stringify({ id: "live", subscribe: what }));
  });
  socket.addEventListener("message", (m) => {
    const msg = JSON.parse(m.data);
    if (msg.subscribed) $("#live-status").textContent = "following " + kind + " " + target;
    if (msg.error) $("#live-status").textContent = "error " + msg.error.code + ": " + msg.error.message;
    const e = msg.event;
    if (!e) return;
    const tr = el("tr");
    tr.append(el("td", e.time || ""), el("td", e.op || e.kind || ""), el("td", JSON.stringify(e.key ?? e.path ?? "")),
      el("td", JSON.stringify(e.new ?? e.value ?? "")), el("td", JSON.stringify(e.old ?? "")));
    $("#live-events tbody").prepend(tr);
  });
  socket.addEventListener("close", () => { if (socket) $("#live-status").textContent = "disconnected"; });
}
$("#live-start").addEventListener("click", startLive);
$("#live-stop").addEventListener("click", stopLive);

// --- Files: list by prefix (paged), download, upload, delete.
let filesNext = null;
function fileUrl(path) {
  return "/v1/files/" + path.split("/").map(encodeURIComponent).join("/");
}
async function listFiles(more) {
  const prefix = $("#files-prefix").value;
  const body = $("#files tbody");
  if (!more) { body.replaceChildren(); filesNext = null; }
  let query = "/v1/files?limit=100&prefix=" + encodeURIComponent(prefix);
  if (more && filesNext) query += "&after=" + encodeURIComponent(filesNext);
  try {
    const page = await api(query);
    for (const f of page.items) {
      const tr = el("tr");
      tr.dataset.path = f.path;
      const link = el("a", f.path);
      link.href = fileUrl(f.path);
      link.download = f.path.split("/").pop();
      const remove = el("button", "delete");
      remove.addEventListener("click", async () => {
        try {
          await api(fileUrl(f.path), { method: "DELETE" });
          tr.remove();
        } catch (e) {
          $("#files-status").textContent = "error " + e.code + ": " + e.message;
        }
      });
      const name = el("td");
      name.append(link);
      tr.append(name, el("td", f.size, "num"), el("td", f.content_type || ""),
        el("td", f.modified_at || ""), el("td", (f.sha256 || "").slice(0, 12)), el("td"));
      tr.lastChild.append(remove);
      body.append(tr);
    }
    filesNext = page.next;
    $("#files-more").disabled = !filesNext;
    $("#files-status").textContent = body.children.length + " file(s)";
  } catch (e) {
    $("#files-status").textContent = "error " + e.code + ": " + e.message;
  }
}
async function uploadFile() {
  const file = $("#files-choose").files[0];
  if (!file) return;
  const path = $("#files-target").value.trim() || ($("#files-prefix").value + file.name);
  $("#files-status").textContent = "uploading " + path + "…";
  try {
    const response = await fetch(fileUrl(path), {
      method: "PUT", body: file, headers: { "content-type": file.type || "application/octet-stream" },
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw (body.error || { code: String(response.status), message: response.statusText });
    }
    await listFiles(false);
    $("#files-status").textContent = "uploaded " + path;
  } catch (e) {
    $("#files-status").textContent = "error " + e.code + ": " + e.message;
  }
}
$("#files-list").addEventListener("click", () => listFiles(false));
$("#files-more").addEventListener("click", () => listFiles(true));
$("#files-upload").addEventListener("click", uploadFile);

drawHistory();
detectDev().then(show);
setInterval(() => { if (!refreshing) refresh(); }, 1000);
