// Cairn's dashboard: plain JavaScript over the node's own HTTP API (/v1/nodes,
// /v1/shards, /v1/events, /v1/sql, /v1/ws, and /v1/dev/... in a `cairn dev` cluster).
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

function duration(ms) {
  if (ms === null || ms === undefined || ms < 0) return "";
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}

// --- Pages (the URL's #fragment names the page).
const pages = ["overview", "shards", "tables", "events", "sql", "live", "files"];
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
    let health = "ok";
    if (!s.leader) health = "no leader";
    else if (voters < s.replication_factor) health = "under-replicated (" + voters + "/" + s.replication_factor + ")";
    else if ((s.leaving || []).length) health = "moving";
    return {
      shard: s.shard,
      tables: (s.tables || []).join(", "),
      leader: s.leader || "",
      replicas: state.map((r) => r.node + (r.role === "leader" ? "*" : r.role === "learner" ? "(learner)" : r.role === "unknown" ? "?" : "")).join(" "),
      lag: lags.length ? Math.max(...lags) : "",
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
    for (const key of ["shard", "tables", "leader", "replicas", "lag", "rf", "health"]) {
      tr.append(el("td", r[key], key === "health" ? (r.health === "ok" ? "ok" : "bad") : (key === "lag" || key === "rf" ? "num" : "")));
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

async function refresh() {
  try {
    const [nodes, shards] = await Promise.all([api("/v1/nodes"), api("/v1/shards")]);
    shardsCache = shards.shards;
    drawNodes(nodes.nodes);
    drawShards();
    drawHealth(nodes.nodes, shards.shards);
    if ($("#page-tables").classList.contains("active")) {
      const tables = await api("/v1/tables");
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
          el("td", t.columns.join(", ")));
        body.append(tr);
      }
    }
    if ($("#page-events").classList.contains("active")) {
      const events = await api("/v1/events");
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
setInterval(refresh, 1000);
