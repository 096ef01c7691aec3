// The gateway's web view: state from /api/state, then live changes from /api/events (SSE).
// Everything a device sends is shown with textContent, never as HTML: telemetry is untrusted.
"use strict";

const KEEP = 200;          // points per chart, as the server keeps per device
const HISTORY = 50;        // method calls remembered per device (the page's own, gone on reload)
// Device ids and field names come from devices and may be "constructor" or "toString": every
// object keyed by them has no prototype, so such a name is only ever a key.
const dict = (obj) => Object.assign(Object.create(null), obj || {});
const state = {
  devices: [], twins: dict(), c2d: dict(), c2dStates: dict(), telemetry: dict(), token: "", selected: null,
  paused: false, unseen: 0, picked: null, methods: dict(), secrets: null, updates: [],
};
const charts = dict();     // field -> {plot, el}
let lastReported = dict(); // client id -> reported JSON last seen, to show what changed

const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

// Times arrive as UTC ISO strings; people read them in their own zone. The cell's title keeps the original.
function localTime(iso) {
  if (!iso) return "";
  const t = new Date(iso);
  return isNaN(t) ? String(iso) : t.toLocaleString();
}
function timeCell(tag, iso) {
  const e = el(tag, localTime(iso));
  if (iso) e.title = iso;
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
  box.textContent = ok ? (answer.text || JSON.stringify(answer))
    : `${answer.status}: ${answer.error || JSON.stringify(answer.payload)}`;
  box.dataset.status = String(answer.status);
}

function clearResult(id, text) {
  const box = $(id);
  box.className = "result";
  box.textContent = text || "";
  delete box.dataset.status;
}

// --- the address bar: the selection survives a reload -----------------------------------------

function syncUrl() {
  const q = new URLSearchParams();
  if (state.selected) q.set("device", state.selected);
  if (state.selected && state.picked) q.set("fields", [...state.picked].join(","));
  const s = q.toString();
  history.replaceState(null, "", "/" + (s ? "?" + s : ""));  // never the token: it lives in the cookie
}

// --- devices ----------------------------------------------------------------------------

// A device's Device Update state, as `edgekit gateway update status` reads it (the server calls its function).
function updateText(d) {
  const u = d.update;
  if (!u) return "";
  if (u.state === null && !u.deployment) return "";  // no agent, nothing deployed: nothing to say
  return u.state_name + (u.installed_update ? ` · ${u.installed_update}` : "");
}
function lastResult(u) {
  const r = u && u.last_install_result;
  return r ? `result ${r.resultCode ?? "-"}, extended ${r.extendedResultCode ?? "-"}` +
    (r.resultDetails ? ` (${r.resultDetails})` : "") : "";
}
function updateCell(d, cell) {
  const u = d.update;
  cell.title = u ? [u.deployment ? `deployment: ${u.deployment.update}, ${u.result}` : "", lastResult(u)]
    .filter(Boolean).join("; ") : "";
  cell.className = u && u.state === 255 ? "failed" : u && u.state === 6 ? "busy" : "";
}
// Certificates' ends as the device reports them (reported certExpiry), warned 30 days ahead.
function expiryText(d) {
  const x = d.expiry;
  if (!x) return "";
  return x.warnings.length ? "⚠ " + x.short
    : x.first ? "until " + x.first.slice(0, 10) : "";
}
function expiryCell(d, cell) {
  cell.title = d.expiry ? d.expiry.warnings.join("; ") : "";
  cell.className = d.expiry && d.expiry.warnings.length ? "warn" : "";
}

// One entry per column after the identity: a new column is one line here ([name, value, kind, decorate]).
const COLUMNS = [
  ["state", (d) => (d.connected ? "connected" : "offline")],
  ["since", (d) => d.since, "time"],
  ["from", (d) => d.peer || ""],
  ["auth", (d) => d.auth],
  ["parent", (d) => (d.parent ? "yes" : "no")],
  ["model id", (d) => d.model_id || ""],
  ["messages", (d) => d.messages, "count"],
  ["last message", (d) => d.last, "time"],
  ["update", updateText, "update", updateCell],
  ["certificates", expiryText, "expiry", expiryCell],
];
$("devices").tHead.rows[0].replaceChildren(el("th", "identity"), ...COLUMNS.map(([name]) => el("th", name)));

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
      tr.append(el("td"), ...COLUMNS.map(([, , cls]) => el("td", null, cls === "count" ? "count" : null)));
      tr.cells[0].append(el("span", "", "dot"), document.createTextNode(d.id));
      tr.addEventListener("click", () => select(d.id));
    }
    tr.dataset.connected = d.connected ? "1" : "0";
    tr.classList.toggle("selected", d.id === state.selected);
    tr.cells[0].firstChild.className = "dot " + (d.connected ? "on" : "off");
    COLUMNS.forEach(([, value, kind, decorate], i) => {
      const cell = tr.cells[i + 1], v = value(d);
      cell.textContent = kind === "time" ? localTime(v) : String(v);
      if (kind === "time") cell.title = v || "";
      if (decorate) decorate(d, cell);
    });
    body.append(tr);  // keeps the server's order
  }
  for (const id of Object.keys(rows)) if (!seen.has(id)) { rows[id].remove(); delete rows[id]; }
  if (state.selected && !seen.has(state.selected)) {
    // Deleted here or elsewhere (the CLI): the page says so rather than show a ghost.
    const gone = state.selected;
    select(null);
    $("devices-result").className = "result error";
    $("devices-result").textContent = `'${gone}' is not in the registry (any more)`;
  }
}

function select(id, picked) {
  if (id && id === state.selected) return;  // a second click on the row keeps the picked fields and charts
  state.selected = id;
  state.picked = picked || null;
  state.secrets = null;
  state.unseen = 0;
  $("detail").hidden = !id;
  $("pick-hint").hidden = !!id;
  $("sel-name").textContent = id || "";
  for (const k of Object.keys(charts)) { charts[k].plot.destroy(); charts[k].el.remove(); delete charts[k]; }
  $("fields").replaceChildren();
  for (const r of ["method-result", "desired-result", "tags-result", "c2d-result", "secrets-result", "devices-result",
    "du-result"]) {
    clearResult(r);  // an answer about another device, or an old error, would mislead
  }
  $("delete-confirm").hidden = true;
  syncUrl();
  renderDevices();
  if (!id) return;
  renderSecrets();
  renderTelemetry();
  renderTwin();
  renderMethods();
  renderC2d();
  renderUpdate();
}

// --- adding and deleting devices: the registry functions `edgekit gateway device add/remove` call ---

$("add-auth").addEventListener("change", () => { $("add-thumb-box").hidden = $("add-auth").value !== "x509_thumbprint"; });

$("add-device").addEventListener("click", () => guarded("add-result", async () => {
  const device = $("add-id").value.trim(), module = $("add-module").value.trim() || null;
  if (!device) throw new Error("give the new device an id");
  const answer = await post("/api/device/add", { device, module, auth: $("add-auth").value,
    thumbprint: $("add-thumb").value.trim() || null, parent: $("add-parent").checked });
  if (answer.status === 200) {
    $("add-id").value = ""; $("add-module").value = ""; $("add-thumb").value = "";
    state.devices = answer.devices;  // the list with it, so selecting it does not wait for the next event
    delete answer.devices;
    select(answer.id);
  }
  return answer;
}));

$("delete-device").addEventListener("click", () => {
  $("delete-name").textContent = state.selected;
  $("delete-confirm").hidden = false;  // a second, explicit click: a deleted device's keys are gone for good
});

$("delete-confirm").addEventListener("click", () => guarded("secrets-result", async () => {
  const answer = await post("/api/device/remove", target());
  if (answer.status === 200) {
    select(null);
    showResult("devices-result", answer);
    $("devices-result").textContent = `removed ${answer.removed}: its keys, twin and queued messages are gone`;
  }
  return answer;
}));

// --- keys and connection strings: masked until asked, fetched only then ---------------------

const MASK = "••••••••••••••••";

function secretRows() {
  const d = state.devices.find((x) => x.id === state.selected);
  if (d && d.auth !== "sas") {
    return [["primary thumbprint", "primary_thumbprint"], ["secondary thumbprint", "secondary_thumbprint"],
      ["connection string", "connection_string"]];
  }
  return [["primary key", "primary_key"], ["secondary key", "secondary_key"],
    ["primary connection string", "connection_string"], ["secondary connection string", "secondary_connection_string"]];
}

function renderSecrets() {
  const shown = state.secrets;
  $("show-secrets").textContent = shown ? "Hide" : "Show";
  $("secrets").tBodies[0].replaceChildren(...secretRows().map(([label, key]) => {
    const tr = el("tr");
    tr.dataset.secret = key;
    const copy = el("button", "Copy", "copy");
    copy.type = "button";
    copy.addEventListener("click", () => copySecret(key, copy));
    const value = shown ? (shown[key] || "(none)") : MASK;
    tr.append(el("td", label), el("td", value, "value"), el("td"));
    tr.cells[2].append(copy);
    return tr;
  }));
}

async function fetchSecrets() {
  const answer = await post("/api/secret", target());
  if (answer.status !== 200) { showResult("secrets-result", answer); return null; }
  return answer;
}

$("show-secrets").addEventListener("click", async () => {
  if (state.secrets) { state.secrets = null; renderSecrets(); return; }
  const id = state.selected, answer = await fetchSecrets();
  if (answer && id === state.selected) { state.secrets = answer; renderSecrets(); }
});

async function copyText(text) {
  try { await navigator.clipboard.writeText(text); return true; } catch (e) { /* not allowed here: the old way */ }
  const ta = el("textarea");
  ta.value = text;
  ta.style.position = "fixed"; ta.style.opacity = "0";
  document.body.append(ta);
  ta.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
  ta.remove();
  return ok;
}

async function copySecret(key, button) {
  // Copying does not unmask: the value goes to the clipboard, not to the screen.
  const secrets = state.secrets || await fetchSecrets();
  if (!secrets) return;
  if (!secrets[key]) { button.textContent = "Nothing to copy"; return; }
  const ok = await copyText(secrets[key]);
  button.textContent = ok ? "Copied" : "Copy failed";
  button.dataset.copied = ok ? "1" : "0";
}

// --- telemetry ----------------------------------------------------------------------------

// Counters and housekeeping that devices send beside their readings: charted only when picked.
const NOT_SENSORS = new Set(["seq", "uptime", "free_heap", "queued", "t", "ts", "timestamp", "time", "count", "id"]);

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
        if (typeof v !== "number" || !isFinite(v) || k === "t") continue;
        (fields[k] = fields[k] || [[], []]);
        fields[k][0].push(typeof r.t === "number" ? r.t : t + i * 1e-3);
        fields[k][1].push(v);
      }
    });
  }
  return fields;
}

function isPicked(name) {
  return state.picked ? state.picked.has(name) : !NOT_SENSORS.has(name);
}

function renderFields(names) {
  const box = $("fields");
  const have = new Set([...box.querySelectorAll("input")].map((i) => i.dataset.field));
  for (const name of names) {
    if (have.has(name)) continue;
    const input = el("input");
    input.type = "checkbox";
    input.dataset.field = name;
    input.addEventListener("change", () => {
      state.picked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.dataset.field));
      syncUrl();
      renderCharts();
    });
    const label = el("label");
    label.append(input, document.createTextNode(name));
    box.append(label);
  }
  for (const input of box.querySelectorAll("input")) input.checked = isPicked(input.dataset.field);
}

function chartWidth() {
  return Math.max(200, Math.min(360, $("charts").clientWidth - 12));
}

// Charts follow the window's width, so a narrow window never scrolls sideways.
window.addEventListener("resize", () => {
  for (const c of Object.values(charts)) c.plot.setSize({ width: chartWidth(), height: 160 });
});

function renderCharts() {
  const fields = series();
  renderFields(Object.keys(fields));
  for (const name of Object.keys(charts)) {
    if (!isPicked(name)) { charts[name].plot.destroy(); charts[name].el.remove(); delete charts[name]; }
  }
  for (const [name, data] of Object.entries(fields)) {
    if (!isPicked(name)) continue;
    const xs = data[0].slice(-KEEP * 4), ys = data[1].slice(-KEEP * 4);
    if (!charts[name]) {
      const box = el("div", null, "chart");
      box.dataset.field = name;
      box.append(el("h4", name));
      $("charts").append(box);
      const plot = new uPlot({  // uPlot draws time axes in the browser's own time zone
        width: chartWidth(), height: 160, legend: { show: false }, cursor: { drag: { x: false, y: false } },
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
  const none = Object.keys(fields).length && !Object.keys(charts).length;
  $("fields-hint").textContent = none ? "nothing charted: the numeric fields above look like counters; tick one to chart it"
    : Object.keys(fields).length ? "tick the fields to chart" : "";
}

// IoT Hub's names for what the store keeps under the MQTT property bag's names, and what it adds.
const SYSTEM = dict({ "$.mid": "message-id", "$.cid": "correlation-id", "$.ct": "content-type", "$.ce": "content-encoding",
  "$.uid": "user-id", "$.exp": "expiry-time-utc", "modelId": "dt-dataschema", "mqtt-retain": "mqtt-retain" });

function isSystem(name) { return name.startsWith("$") || name in SYSTEM; }

function propertyText(rec) {
  const props = Object.entries(rec.properties || {});
  let shown = props.filter(([k]) => !isSystem(k)).map(([k, v]) => `${k}=${v}`);
  if ($("tm-system").checked) {
    const [device, module] = rec.id.split("/");
    const sys = [["iothub-connection-device-id", device]];
    if (module) sys.push(["iothub-connection-module-id", module]);
    sys.push(["iothub-enqueuedtime", rec.time], ["iothub-message-source", "Telemetry"]);
    for (const [k, v] of props) if (isSystem(k)) sys.push([SYSTEM[k] || k, v]);
    shown = shown.concat(sys.map(([k, v]) => `${k}=${v}`));
  }
  return shown.join("  ");
}

function renderTelemetry() {
  const body = $("telemetry").tBodies[0];
  const needle = $("tm-filter").value.trim().toLowerCase();
  const all = (state.telemetry[state.selected] || []).slice().reverse();
  const out = [];
  for (const rec of all) {
    const props = propertyText(rec);
    if (needle && !(String(rec.body) + " " + props).toLowerCase().includes(needle)) continue;
    const tr = el("tr");
    tr.append(timeCell("td", rec.time), el("td", rec.body), el("td", props));  // the body as sent, cut at 2 KB
    out.push(tr);
    if (out.length >= 20) break;
  }
  body.replaceChildren(...out);
  $("tm-status").textContent = state.paused ? `paused, ${state.unseen} new message(s) not shown`
    : needle ? `${out.length} matching of the latest` : "";
  renderCharts();
}

$("tm-pause").addEventListener("click", () => {
  state.paused = !state.paused;
  $("tm-pause").textContent = state.paused ? "Resume" : "Pause";
  $("tm-pause").setAttribute("aria-pressed", String(state.paused));
  if (!state.paused) { state.unseen = 0; if (state.selected) renderTelemetry(); }
  else $("tm-status").textContent = "paused, 0 new message(s) not shown";
});

$("tm-clear").addEventListener("click", () => {
  // Clears what the page shows of this device; telemetry.jsonl (and `edgekit gateway telemetry`) keep it all.
  state.telemetry[state.selected] = [];
  for (const k of Object.keys(charts)) { charts[k].plot.destroy(); charts[k].el.remove(); delete charts[k]; }
  state.unseen = 0;
  renderTelemetry();
});

$("tm-filter").addEventListener("input", () => { if (!state.paused) renderTelemetry(); });
$("tm-system").addEventListener("change", () => { if (!state.paused) renderTelemetry(); });

// --- twin -------------------------------------------------------------------------------

const AUTH_TYPES = dict({ sas: "sas", x509_thumbprint: "selfSigned", x509_ca: "certificateAuthority" });

function fullTwin(id, twin) {
  // The twin document IoT Hub's service API returns, from what the gateway knows: identity, tags, properties.
  const d = state.devices.find((x) => x.id === id) || {};
  const [deviceId, moduleId] = id.split("/");
  const doc = { deviceId };
  if (moduleId) doc.moduleId = moduleId;
  Object.assign(doc, {
    status: "enabled", connectionState: d.connected ? "Connected" : "Disconnected",
    lastActivityTime: d.last || d.since || null, authenticationType: AUTH_TYPES[d.auth] || d.auth,
    x509Thumbprint: { primaryThumbprint: d.thumbprint || null, secondaryThumbprint: null },
    modelId: d.model_id || "", cloudToDeviceMessageCount: moduleId ? 0 : (state.c2d[deviceId] || []).length,
    capabilities: { iotEdge: false }, tags: twin.tags || {},
    properties: { desired: twin.desired, reported: twin.reported },
  });
  return doc;
}

function renderTwin() {
  const twin = state.twins[state.selected] || { desired: { $version: 1 }, reported: { $version: 1 } };
  $("desired").textContent = JSON.stringify(twin.desired, null, 1);
  $("reported").textContent = JSON.stringify(twin.reported, null, 1);
  $("tags").textContent = JSON.stringify(twin.tags || {}, null, 1);
  $("twin-full").textContent = JSON.stringify(fullTwin(state.selected, twin), null, 1);
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

// --- methods ------------------------------------------------------------------------------

function renderMethods() {
  const calls = state.methods[state.selected] || [];
  $("method-history").tBodies[0].replaceChildren(...calls.map((c) => {
    const tr = el("tr");
    tr.dataset.status = String(c.status);
    tr.append(timeCell("td", c.time), el("td", c.name), el("td", JSON.stringify(c.payload)), el("td", c.status),
      el("td", c.error || JSON.stringify(c.answer)));
    return tr;
  }));
}

// --- C2D ----------------------------------------------------------------------------------

const sent = [];  // {mid, device}

function c2dState(m) {
  if ((state.c2d[m.device] || []).includes(m.mid)) return "queued";
  return state.c2dStates[m.mid] || "queued";  // the outcome arrives with the next look at the gateway
}

function renderC2d() {
  const device = state.selected && state.selected.split("/")[0];
  $("c2d-list").replaceChildren(...sent.filter((m) => m.device === device).map((m) => {
    const s = c2dState(m);
    const li = el("li", `${m.mid}: ${s}`);
    li.dataset.state = s;
    li.dataset.mid = m.mid;
    return li;
  }));
}

// --- Device Update: what `edgekit gateway update status` shows, deploy and cancel as it does ---

function renderUpdate() {
  const d = state.devices.find((x) => x.id === state.selected);
  const panel = $("du-panel");
  panel.hidden = !d || !!d.module;  // ADU updates devices, not modules
  if (panel.hidden) return;
  const u = d.update, dep = u.deployment;
  const rows = [["state", u.state_name], ["installed update", u.installed_update || "-"],
    ["deployment", dep ? `${dep.update}${dep.group ? " to group " + dep.group : ""}, ${u.result}` +
      (dep.action === 255 ? " (cancel sent)" : "") : "none"],
    ["agent's workflow", u.workflow_id || "-"], ["last install result", lastResult(u) || "-"]];
  const steps = (u.last_install_result && u.last_install_result.stepResults) || {};
  for (const [k, v] of Object.entries(steps)) rows.push([k, JSON.stringify(v)]);
  $("du-status").tBodies[0].replaceChildren(...rows.map(([k, v]) => {
    const tr = el("tr", null);
    tr.dataset.key = k;
    tr.append(el("td", k), el("td", v));
    return tr;
  }));
  const x = d.expiry, quiet = u.state === null && !dep;  // no agent, nothing deployed: one line, not a table
  $("du-status").hidden = quiet;
  $("du-expiry").hidden = quiet && !x;
  $("du-expiry").textContent = !x ? "certificates' ends: not reported by the device"
    : x.warnings.length ? "⚠ " + x.warnings.join("; ") + ": re-trust the device before then (docs/updates.md)"
      : `certificates valid until ${x.first || "?"} at the earliest`;
  $("du-expiry").className = "hint" + (x && x.warnings.length ? " warn" : "");
  const select = $("du-update"), was = select.value;
  const names = state.updates.map((x) => x.update);
  if ([...select.options].map((o) => o.value).join("\n") !== names.join("\n")) {
    select.replaceChildren(...state.updates.map((x) => Object.assign(el("option", x.update), { value: x.update,
      title: `${(x.handlers || []).join(", ")}; ${JSON.stringify(x.compatibility)}; imported ${x.imported}` })));
    select.value = names.includes(was) ? was : names[names.length - 1] || "";  // the last imported by default
  }
  $("du-deploy").disabled = !names.length;
  $("du-deploy-group").hidden = !d.group;
  $("du-deploy-group").disabled = !names.length;
  $("du-group").textContent = d.group || "";
  const active = !!dep && dep.action !== 255;
  $("du-cancel").hidden = !active;
  $("du-cancel-group").hidden = !active || !dep.group;
  $("du-cancel-group-name").textContent = (dep && dep.group) || "";
  $("du-hint").textContent = [quiet ? "no update agent has reported (deviceUpdate.agent in the reported properties)" : "",
    names.length ? "" : "no update imported yet: 'edgekit update create', then 'edgekit gateway update import MANIFEST'"]
    .filter(Boolean).join("; ");
}

function deployOrCancel(path, group) {
  return guarded("du-result", async () => {
    clearResult("du-result", "sending…");
    const body = { device: target().device, update: $("du-update").value };
    if (group) body.group = group;
    const answer = await post(path, body);
    if (answer.status === 200) {
      const who = (answer.devices || []).map((x) => x.device).join(", ");
      return { status: 200, text: path.endsWith("deploy") ? `deployed ${answer.update} (workflow ${answer.workflow}) to ${who}`
        : `cancel sent to ${who}` };
    }
    return answer;
  });
}
$("du-deploy").addEventListener("click", () => deployOrCancel("/api/update/deploy", null));
$("du-deploy-group").addEventListener("click", () => deployOrCancel("/api/update/deploy", $("du-group").textContent));
$("du-cancel").addEventListener("click", () => deployOrCancel("/api/update/cancel", null));
$("du-cancel-group").addEventListener("click", () => deployOrCancel("/api/update/cancel", $("du-cancel-group-name").textContent));

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
  const name = $("method-name").value;
  clearResult("method-result", `calling ${name}…`);  // the last answer (an error, say) is not this call's
  const payload = parseJson($("method-payload").value || "null", "payload", false);
  const id = state.selected, time = new Date().toISOString();
  const answer = await post("/api/method", { ...target(), name, payload, timeout: Number($("method-timeout").value) });
  const calls = (state.methods[id] = state.methods[id] || []);
  calls.unshift({ time, name, payload, status: answer.status, answer: answer.payload, error: answer.error });
  calls.splice(HISTORY);
  if (id === state.selected) renderMethods();
  return answer;
}));

$("send-desired").addEventListener("click", () => guarded("desired-result", async () => {
  const desired = parseJson($("desired-patch").value, "the desired patch", true);
  return post("/api/twin", { ...target(), desired });
}));

$("send-tags").addEventListener("click", () => guarded("tags-result", async () => {
  const tags = parseJson($("tags-patch").value, "the tags patch", true);
  return post("/api/tags", { ...target(), tags });
}));

$("send-c2d").addEventListener("click", () => guarded("c2d-result", async () => {
  const properties = parseJson($("c2d-props").value || "{}", "properties", true);
  // The same fields as `edgekit gateway send-c2d --message-id ... --expiry ...`, the same rules (server side).
  const system = { message_id: $("c2d-mid").value, correlation_id: $("c2d-cid").value, content_type: $("c2d-ct").value,
    content_encoding: $("c2d-ce").value, expiry: $("c2d-exp").value };
  const answer = await post("/api/c2d", { device: target().device, body: $("c2d-body").value, properties, system });
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
  const mine = records.filter((r) => r.id === state.selected).length;
  if (!mine) return;
  if (state.paused) {  // kept, not drawn: resuming shows them
    state.unseen += mine;
    $("tm-status").textContent = `paused, ${state.unseen} new message(s) not shown`;
  } else {
    renderTelemetry();
  }
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
  const asked = new URLSearchParams(location.search);
  const r = await fetch("/api/state", { credentials: "same-origin" });
  if (!r.ok) { $("live").textContent = "refused: open the URL serve printed"; return; }
  const s = await r.json();
  Object.assign(state, { devices: s.devices, twins: dict(s.twins), c2d: dict(s.c2d), telemetry: dict(s.telemetry),
    c2dStates: dict(s.c2d_states), token: s.token, updates: s.updates || [] });
  $("hostname").textContent = s.hostname;
  renderUpstream(s.upstream);
  noteReported();
  const want = asked.get("device");
  const fields = asked.get("fields");
  if (want && state.devices.some((d) => d.id === want)) {
    select(want, fields !== null ? new Set(fields.split(",").filter(Boolean)) : null);
  } else {
    syncUrl();  // drops the token from the address bar (and a device no longer registered)
    renderDevices();
  }
  const events = new EventSource("/api/events");
  events.onopen = () => { $("live").textContent = "live"; $("live").className = "live"; };
  events.onerror = () => { $("live").textContent = "reconnecting"; $("live").className = "live off"; };
  events.addEventListener("telemetry", (e) => onTelemetry(JSON.parse(e.data)));
  events.addEventListener("devices", (e) => {
    state.devices = JSON.parse(e.data);
    renderDevices();
    if (state.selected) { renderTwin(); renderUpdate(); }  // connection state and model id are part of the whole twin
  });
  events.addEventListener("updates", (e) => { state.updates = JSON.parse(e.data); if (state.selected) renderUpdate(); });
  events.addEventListener("twins", (e) => {
    state.twins = dict(JSON.parse(e.data));
    noteReported();
    if (state.selected) renderTwin();
  });
  events.addEventListener("c2d", (e) => { state.c2d = dict(JSON.parse(e.data)); renderC2d(); });
  events.addEventListener("c2d_states", (e) => { state.c2dStates = dict(JSON.parse(e.data)); renderC2d(); });
  events.addEventListener("upstream", (e) => renderUpstream(JSON.parse(e.data)));
}

start();
