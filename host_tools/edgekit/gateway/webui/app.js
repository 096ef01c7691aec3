// The gateway's web view: state from /api/state, then live changes from /api/events (SSE).
// Everything a device sends is shown with textContent, never as HTML: telemetry is untrusted.
"use strict";

const KEEP = 200;          // points per chart, as the server keeps per device
// Device ids and field names come from devices and may be "constructor" or "toString": every
// object keyed by them has no prototype, so such a name is only ever a key.
const dict = (obj) => Object.assign(Object.create(null), obj || {});
const state = { devices: [], twins: dict(), c2d: dict(), telemetry: dict(), token: "", selected: null };
const charts = dict();     // field -> {plot, el}
let lastReported = dict(); // client id -> reported JSON last seen, to show what changed

const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Edgekit-Token": state.token },
    body: JSON.stringify(body),
  });
  return r.json();
}

function showResult(id, answer) {
  const box = $(id);
  const ok = answer.status >= 200 && answer.status < 300;
  box.className = "result " + (ok ? "ok" : "error");
  box.textContent = ok ? JSON.stringify(answer) : `${answer.status}: ${answer.error || JSON.stringify(answer.payload)}`;
  box.dataset.status = String(answer.status);
}

// --- devices ----------------------------------------------------------------------------

const rows = dict();  // identity -> its <tr>, updated in place so a click never lands on a replaced row

function renderDevices() {
  const body = $("devices").tBodies[0];
  const seen = new Set();
  for (const d of state.devices) {
    seen.add(d.id);
    let tr = rows[d.id];
    if (!tr) {
      tr = rows[d.id] = el("tr");
      tr.dataset.id = d.id;
      for (let i = 0; i < 9; i++) tr.append(el("td"));
      tr.cells[0].append(el("span", "", "dot"), document.createTextNode(d.id));
      tr.cells[7].className = "count";
      tr.addEventListener("click", () => select(d.id));
    }
    tr.dataset.connected = d.connected ? "1" : "0";
    tr.classList.toggle("selected", d.id === state.selected);
    tr.cells[0].firstChild.className = "dot " + (d.connected ? "on" : "off");
    const cells = [d.connected ? "connected" : "offline", d.since || "", d.peer || "", d.auth,
      d.parent ? "yes" : "no", d.model_id || "", d.messages, d.last || ""];
    cells.forEach((text, i) => { tr.cells[i + 1].textContent = String(text); });
    body.append(tr);  // keeps the server's order
  }
  for (const id of Object.keys(rows)) if (!seen.has(id)) { rows[id].remove(); delete rows[id]; }
}

function select(id) {
  state.selected = id;
  $("detail").hidden = false;
  $("sel-name").textContent = id;
  for (const k of Object.keys(charts)) { charts[k].plot.destroy(); charts[k].el.remove(); delete charts[k]; }
  renderDevices();
  renderTelemetry();
  renderTwin();
  renderC2d();
}

// --- telemetry ----------------------------------------------------------------------------

function readings(rec) {
  // A batched message carries a list of readings (or {"readings": [...]}): chart each one.
  const j = rec.json;
  if (Array.isArray(j)) return j.filter((x) => x && typeof x === "object");
  if (j && Array.isArray(j.readings)) return j.readings.filter((x) => x && typeof x === "object");
  return j ? [j] : [];
}

function series() {
  const recs = state.telemetry[state.selected] || [];
  const fields = dict();
  for (const rec of recs) {
    const t = Date.parse(rec.time) / 1000;
    readings(rec).forEach((r, i) => {
      for (const [k, v] of Object.entries(r)) {
        if (typeof v !== "number" || !isFinite(v)) continue;
        (fields[k] = fields[k] || [[], []]);
        fields[k][0].push(typeof r.t === "number" ? r.t : t + i * 1e-3);
        fields[k][1].push(v);
      }
    });
  }
  return fields;
}

function renderCharts() {
  const fields = series();
  for (const [name, data] of Object.entries(fields)) {
    const xs = data[0].slice(-KEEP * 4), ys = data[1].slice(-KEEP * 4);
    if (!charts[name]) {
      const box = el("div", null, "chart");
      box.dataset.field = name;
      box.append(el("h4", name));
      $("charts").append(box);
      const plot = new uPlot({
        width: 360, height: 160, legend: { show: false }, cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true } },
        series: [{}, { label: name, stroke: "#1f5fbf", width: 1.5, points: { show: xs.length < 40 } }],
        axes: [{ size: 30 }, { size: 64 }],
      }, [xs, ys], box);
      charts[name] = { plot, el: box };
    } else {
      charts[name].plot.setData([xs, ys]);
    }
    charts[name].el.dataset.points = String(xs.length);
  }
}

function renderTelemetry() {
  const body = $("telemetry").tBodies[0];
  body.replaceChildren();
  const recs = (state.telemetry[state.selected] || []).slice(-20).reverse();
  for (const rec of recs) {
    const props = Object.entries(rec.properties || {}).map(([k, v]) => `${k}=${v}`).join("  ");
    const tr = el("tr");
    tr.append(el("td", rec.time), el("td", rec.body), el("td", props));  // the body as sent, cut at 2 KB
    body.append(tr);
  }
  renderCharts();
}

// --- twin -------------------------------------------------------------------------------

function renderTwin() {
  const twin = state.twins[state.selected] || { desired: { $version: 1 }, reported: { $version: 1 } };
  $("desired").textContent = JSON.stringify(twin.desired, null, 1);
  $("reported").textContent = JSON.stringify(twin.reported, null, 1);
  $("desired-version").textContent = "$version " + twin.desired.$version;
  $("reported-version").textContent = "$version " + twin.reported.$version;
  // The methods the device reports it answers (firmware: reported property "methods").
  const names = Array.isArray(twin.reported.methods) ? twin.reported.methods : [];
  $("method-names").replaceChildren(...names.map((n) => Object.assign(el("option"), { value: String(n) })));
}

function noteReported() {
  for (const [id, twin] of Object.entries(state.twins)) {
    const now = twin.reported || {};
    const before = lastReported[id];
    lastReported[id] = now;
    if (!before || id !== state.selected) continue;
    const change = dict();
    for (const [k, v] of Object.entries(now)) {
      if (JSON.stringify(before[k]) !== JSON.stringify(v)) change[k] = v;
    }
    if (Object.keys(change).length) $("reported-change").textContent = JSON.stringify(change, null, 1);
  }
}

// --- C2D ----------------------------------------------------------------------------------

const sent = [];  // {mid, device, delivered}

function renderC2d() {
  const device = state.selected && state.selected.split("/")[0];
  const queued = new Set(state.c2d[device] || []);
  $("c2d-list").replaceChildren(...sent.filter((m) => m.device === device).map((m) => {
    const li = el("li", `${m.mid}: ${queued.has(m.mid) ? "queued" : "delivered"}`);
    li.dataset.state = queued.has(m.mid) ? "queued" : "delivered";
    return li;
  }));
}

// --- actions ------------------------------------------------------------------------------

function parseJson(text, what, wantObject) {
  let v;
  try { v = JSON.parse(text); } catch (e) { throw new Error(`${what} is not JSON: ${e.message}`); }
  if (wantObject && (v === null || typeof v !== "object" || Array.isArray(v))) throw new Error(`${what} must be a JSON object`);
  return v;
}

function target() {
  const [device, module] = state.selected.split("/");
  return { device, module: module || null };
}

async function guarded(resultId, act) {
  try { showResult(resultId, await act()); }
  catch (e) { showResult(resultId, { status: 400, error: e.message }); }
}

$("invoke").addEventListener("click", () => guarded("method-result", async () => {
  const payload = parseJson($("method-payload").value || "null", "payload", false);
  return post("/api/method", { ...target(), name: $("method-name").value, payload,
    timeout: Number($("method-timeout").value) });
}));

$("send-desired").addEventListener("click", () => guarded("desired-result", async () => {
  const desired = parseJson($("desired-patch").value, "the desired patch", true);
  return post("/api/twin", { ...target(), desired });
}));

$("send-c2d").addEventListener("click", () => guarded("c2d-result", async () => {
  const properties = parseJson($("c2d-props").value || "{}", "properties", true);
  const answer = await post("/api/c2d", { device: target().device, body: $("c2d-body").value, properties });
  if (answer.mid) sent.push({ mid: answer.mid, device: target().device });
  renderC2d();
  return answer;
}));

// --- live updates ---------------------------------------------------------------------------

function onTelemetry(records) {
  for (const rec of records) {
    const list = (state.telemetry[rec.id] = state.telemetry[rec.id] || []);
    list.push(rec);
    if (list.length > KEEP) list.splice(0, list.length - KEEP);
  }
  if (records.some((r) => r.id === state.selected)) renderTelemetry();
}

// --- the gateway's link to IoT Hub ---------------------------------------------------------

function renderUpstream(u) {
  if (!u) return;
  state.upstream = u;
  const box = $("upstream");
  box.className = "upstream " + u.upstream;
  box.dataset.state = u.upstream;
  box.textContent = u.upstream === "online" ? `upstream online, ${u.expired} expired`
    : `upstream offline: ${u.held} held, ${u.expired} expired (TTL ${u.ttl} s)`;
  $("upstream-switch").textContent = u.upstream === "online" ? "go offline" : "go online";
}

$("upstream-switch").addEventListener("click", async () => {
  const want = state.upstream && state.upstream.upstream === "online" ? "offline" : "online";
  const answer = await post("/api/upstream", { state: want });
  if (answer.status === 200) renderUpstream(answer);
});

async function start() {
  const r = await fetch("/api/state", { credentials: "same-origin" });
  if (!r.ok) { $("live").textContent = "refused: open the URL serve printed"; return; }
  const s = await r.json();
  Object.assign(state, { devices: s.devices, twins: dict(s.twins), c2d: dict(s.c2d), telemetry: dict(s.telemetry),
    token: s.token });
  $("hostname").textContent = s.hostname;
  renderUpstream(s.upstream);
  history.replaceState(null, "", "/");  // the token now lives in the cookie, not in the address bar
  noteReported();
  renderDevices();
  const events = new EventSource("/api/events");
  events.onopen = () => { $("live").textContent = "live"; $("live").className = "live"; };
  events.onerror = () => { $("live").textContent = "reconnecting"; $("live").className = "live off"; };
  events.addEventListener("telemetry", (e) => onTelemetry(JSON.parse(e.data)));
  events.addEventListener("devices", (e) => { state.devices = JSON.parse(e.data); renderDevices(); });
  events.addEventListener("twins", (e) => {
    state.twins = dict(JSON.parse(e.data));
    noteReported();
    if (state.selected) renderTwin();
  });
  events.addEventListener("c2d", (e) => { state.c2d = dict(JSON.parse(e.data)); renderC2d(); });
  events.addEventListener("upstream", (e) => renderUpstream(JSON.parse(e.data)));
}

start();
