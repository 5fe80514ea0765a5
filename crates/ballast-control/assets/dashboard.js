// The Ballast dashboard: polls GET /v1/dashboard every second with the admin token and renders
// it; charts are uPlot's. Actions (drain, enable, weight, algorithm) are the admin API's own
// writes. Every value is set as text, never as HTML.
"use strict";

const POLL_MS = 1000;
const HISTORY = 120; // points kept per chart: two minutes
const ALGORITHMS = ["round_robin", "weighted_round_robin", "least_connections", "least_request",
  "random", "maglev", "ring_hash", "bounded_load"];

let token = tokenFromFragment() || localStorage.getItem("ballast-token") || "";
const charts = { backends: newHistory(), lbs: newHistory() };

function tokenFromFragment() {
  const match = location.hash.match(/token=([^&]+)/);
  if (!match) return null;
  const found = decodeURIComponent(match[1]);
  localStorage.setItem("ballast-token", found);
  history.replaceState(null, "", location.pathname);
  return found;
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function number(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    showLogin("The admin token was refused.");
    throw new Error("unauthorized");
  }
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = answer.error || {};
    throw new Error((error.field ? error.field + ": " : "") + (error.reason || response.status));
  }
  return answer;
}

function showLogin(text) {
  document.getElementById("login").classList.add("shown");
  document.getElementById("message").textContent = text || "";
}

function act(promise) {
  promise.then(() => {
    document.getElementById("message").textContent = "";
    poll();
  }).catch((error) => {
    if (error.message !== "unauthorized") document.getElementById("message").textContent = error.message;
  });
}

function setState(pool, address, state) {
  act(api("PUT", `/v1/pools/${pool}/backends/${encodeURIComponent(address)}/state`, { state }));
}

function setWeight(pool, address, input) {
  act(api("PUT", `/v1/pools/${pool}/backends/${encodeURIComponent(address)}/weight`,
    { weight: Number(input.value) }));
}

function setAlgorithm(pool, select) {
  act(api("PUT", `/v1/pools/${pool}/algorithm`, { algorithm: select.value }));
}

// A pool's own policy as the API names its fields (those it sets; the rest are the LB servers'
// defaults): `max_requests 100 · sticky_cookie lb · tls true`.
function describePolicy(policy) {
  return Object.entries(policy || {})
    .filter(([field]) => field !== "protocol")
    .map(([field, value]) => `${field} ${value}`)
    .join(" · ");
}

function renderPools(pools) {
  const container = document.getElementById("pools");
  // Leave the table alone while someone types a weight or picks an algorithm in it.
  if (container.contains(document.activeElement) && document.activeElement.tagName !== "BUTTON") return;
  container.replaceChildren(...pools.map((pool) => {
    const select = el("select", { "data-algorithm-of": pool.name },
      ALGORITHMS.map((name) => {
        const option = el("option", { value: name }, name);
        option.selected = name === pool.algorithm.algorithm;
        return option;
      }));
    const heading = el("p", {},
      el("strong", {}, pool.name), " · algorithm ", select, " ",
      el("button", { onclick: () => setAlgorithm(pool.name, select) }, "apply"),
      el("span", { class: "muted" }, ` · hash key ${pool.hash_key}`,
        ` · backends speak ${pool.protocol}`,
        pool.dns_name ? ` · DNS ${pool.dns_name}` : ""));
    const rows = pool.backends.map((b) => {
      const weight = el("input", { class: "weight", type: "number", min: "0", value: b.weight });
      return el("tr", { "data-backend": b.address, "data-pool": pool.name },
        el("td", {}, b.address),
        el("td", { class: "num" }, weight, " ",
          el("button", { onclick: () => setWeight(pool.name, b.address, weight) }, "set")),
        el("td", { class: "admin-state " + b.admin_state }, b.admin_state),
        el("td", { class: "health " + b.health, title: b.health_reason || "" }, b.health),
        el("td", { class: "num" }, number(b.phi, 2)),
        el("td", { class: "num in-flight" }, number(b.in_flight, 0)),
        el("td", { class: "num rps" }, number(b.requests_per_second, 1)),
        el("td", {},
          b.admin_state === "active"
            ? el("button", { onclick: () => setState(pool.name, b.address, "draining") }, "drain")
            : el("button", { onclick: () => setState(pool.name, b.address, "active") }, "enable")));
    });
    const policy = describePolicy(pool.policy);
    return el("div", { class: "pool", "data-pool": pool.name }, heading,
      policy ? el("p", { class: "muted policy" }, "policy: ", policy) : null,
      table(["backend", "weight", "admin", "health", "phi", "in flight", "req/s", ""], rows));
  }));
}

function renderLbs(lbs) {
  const rows = lbs.map((lb) => {
    const f = lb.figures || {};
    return el("tr", { "data-lb": lb.name },
      el("td", {}, lb.name),
      el("td", {}, lb.addresses.join(" ")),
      el("td", { class: lb.state }, lb.state),
      el("td", { class: lb.liveness, title: lb.liveness_reason || "" }, lb.liveness),
      el("td", { class: "num" }, f.cpu_cores === undefined ? "–" : (100 * f.cpu_cores).toFixed(1) + " %"),
      el("td", { class: "num" }, f.resident_bytes === undefined ? "–" : (f.resident_bytes / 1048576).toFixed(1) + " MiB"),
      el("td", { class: "num" }, number(f.connections, 0)),
      el("td", { class: "num" }, number(f.requests_per_second, 1)),
      el("td", { class: "num" }, lb.applied_revision),
      el("td", { class: "num" }, lb.lag));
  });
  document.getElementById("lbs").replaceChildren(
    table(["name", "listens on", "state", "liveness", "CPU", "memory", "connections", "req/s", "revision", "lag"], rows));
}

// Each table's routes in the order they are tried: what they match and where they send.
function renderRoutes(tables) {
  const rows = [];
  for (const t of tables) {
    t.routes.forEach((r, position) => {
      const matches = [r.host && `host ${r.host}`, r.path && `path ${r.path}`,
        r.path_prefix && `path ${r.path_prefix}/…`, r.method && `method ${r.method}`,
        r.header && `header ${r.header}`].filter(Boolean).join(", ") || "everything";
      const action = r.pool ? `pool ${r.pool}`
        : r.redirect ? `redirect ${r.status || 302} ${r.redirect}` : `status ${r.status || 404}`;
      rows.push(el("tr", { "data-route": `${t.name}#${position}` }, el("td", {}, t.name),
        el("td", { class: "num" }, position), el("td", {}, matches), el("td", {}, action)));
    });
  }
  document.getElementById("routes").replaceChildren(rows.length
    ? table(["table", "#", "matches", "goes to"], rows)
    : el("p", { class: "muted" }, "No route tables: each LB listener serves one pool."));
}

function renderDns(pools) {
  const rows = pools.filter((p) => p.dns_name).map((p) =>
    el("tr", { "data-dns": p.dns_name }, el("td", {}, el("code", {}, p.dns_name)),
      el("td", {}, p.dns_answer.length ? p.dns_answer.join(", ") : "NODATA (no live LB)")));
  document.getElementById("dns").replaceChildren(rows.length
    ? table(["name", "A / AAAA answer"], rows)
    : el("p", { class: "muted" }, "No pool has a DNS name."));
}

function renderLeadership(leader) {
  const box = document.getElementById("leadership");
  document.getElementById("leader").textContent = leader ? (leader.leading ? leader.identity : "another instance") : "not running here";
  if (!leader) {
    box.replaceChildren(el("p", { class: "muted" }, "The orchestrator does not run in this instance."));
    return;
  }
  box.replaceChildren(table(["", ""], [
    el("tr", {}, el("td", {}, "this instance"), el("td", {}, leader.identity)),
    el("tr", {}, el("td", {}, "leading"), el("td", { class: leader.leading ? "up" : "draining" }, leader.leading ? "yes" : "no")),
    el("tr", {}, el("td", {}, "election"), el("td", {}, leader.election)),
    el("tr", {}, el("td", {}, "fencing token"), el("td", {}, leader.token ?? "–")),
    el("tr", {}, el("td", {}, "last step-down"), el("td", {}, leader.last_step_down ?? "–")),
  ]));
}

// A write as `field=value …`, its numbers as people read them (phi 0.00, not 3.9e-8).
function describeWrite(value) {
  const shown = (v) => {
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(2);
    if (v !== null && typeof v === "object") return JSON.stringify(v);
    return String(v);
  };
  return Object.entries(value || {})
    .filter(([key, v]) => key !== "op" && v !== null && v !== undefined)
    .map(([key, v]) => `${key}=${shown(v)}`)
    .join(" ");
}

function renderChanges(changes) {
  const rows = changes.map((c) => el("tr", {},
    el("td", { class: "num" }, c.revision),
    el("td", {}, new Date(c.at_ms).toLocaleTimeString()),
    el("td", {}, c.operation),
    el("td", {}, el("code", {}, describeWrite(c.value)))));
  document.getElementById("changes").replaceChildren(table(["revision", "at", "operation", "write"], rows));
}

function newHistory() {
  return { times: [], series: new Map(), plot: null, keys: "" };
}

// Appends one point per series at `time`; rebuilds the chart when the set of series changed.
function chart(id, history, time, values, digits) {
  history.times.push(time);
  for (const [key, value] of Object.entries(values)) {
    if (!history.series.has(key)) history.series.set(key, new Array(history.times.length - 1).fill(null));
  }
  for (const [key, points] of history.series) points.push(key in values ? values[key] : null);
  if (history.times.length > HISTORY) {
    history.times.shift();
    for (const points of history.series.values()) points.shift();
  }
  const keys = [...history.series.keys()].sort();
  const data = [history.times, ...keys.map((k) => history.series.get(k))];
  const container = document.getElementById(id);
  if (history.plot && history.keys === keys.join("|")) {
    history.plot.setData(data);
    return;
  }
  if (history.plot) history.plot.destroy();
  history.keys = keys.join("|");
  const palette = ["#2f5bd3", "#1a7f37", "#b35900", "#8e24aa", "#c62828", "#00838f", "#5d4037", "#546e7a"];
  history.plot = new uPlot({
    width: Math.max(300, container.clientWidth || 520),
    height: 220,
    series: [{}, ...keys.map((key, i) => ({ label: key, stroke: palette[i % palette.length], width: 2,
      value: (u, v) => v === null || v === undefined ? "–" : v.toFixed(digits) }))],
    axes: [{}, { size: 50 }],
    scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
  }, data, container);
}

async function poll() {
  if (!token) {
    showLogin("Enter the admin token (ballast up prints it; it is in --dir/token).");
    return;
  }
  let doc;
  try {
    doc = await api("GET", "/v1/dashboard");
  } catch (error) {
    if (error.message !== "unauthorized") document.getElementById("message").textContent = "control unreachable: " + error.message;
    return;
  }
  document.getElementById("login").classList.remove("shown");
  document.getElementById("message").textContent = "";
  document.getElementById("revision").textContent = doc.revision;
  document.getElementById("updated").textContent = "updated " + new Date(doc.at_ms).toLocaleTimeString();
  renderPools(doc.pools);
  renderLbs(doc.lbs);
  renderRoutes(doc.route_tables);
  renderDns(doc.pools);
  renderLeadership(doc.leader);
  renderChanges(doc.changes);
  const time = doc.at_ms / 1000;
  const rates = {};
  for (const pool of doc.pools) for (const b of pool.backends) rates[`${pool.name} ${b.address}`] = b.requests_per_second;
  chart("chart-backends", charts.backends, time, rates, 1);
  const cpu = {};
  for (const lb of doc.lbs) if (lb.figures && lb.state !== "stopped") cpu[lb.name] = lb.figures.cpu_cores;
  chart("chart-lbs", charts.lbs, time, cpu, 3);
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  localStorage.setItem("ballast-token", token);
  poll();
});

poll();
setInterval(poll, POLL_MS);
