// The hub's own page: a small Matrix client (login, /sync long-polls) that shows each room as a
// place/device with its latest reading and a plot from the series API (docs/series-api.md).
// No framework, no build step; every user-provided string goes in through textContent.
"use strict";

const API = "/_matrix/client/v3";
const SYNC_FILTER = JSON.stringify({
  room: {timeline: {limit: 10}, state: {types: ["m.room.name", "m.room.canonical_alias"]}},
  presence: {not_types: ["*"]}, account_data: {not_types: ["*"]},
});
const BUCKETS = 120;
const MAX_FIELDS = 16;

const session = {token: localStorage.getItem("hub.token"), userId: localStorage.getItem("hub.user"), since: null,
                 running: false, rangeMs: 3600000};
const rooms = new Map();  // room id -> {id, name, latest, fields, field, el, refresh}

function $(id) { return document.getElementById(id); }

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

async function api(method, path, body) {
  const headers = {};
  if (session.token) headers.Authorization = "Bearer " + session.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const err = new Error((data && data.error) || ("HTTP " + resp.status));
    err.status = resp.status;
    err.errcode = data && data.errcode;
    throw err;
  }
  return data;
}

// -- readings: the same rules as matrix_core/series.py ----------------------------------------

function numberOf(v) {
  if (typeof v === "number" && Number.isFinite(v) && typeof v !== "boolean") return v;
  if (v && typeof v === "object" && !Array.isArray(v)) {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === "$f" && typeof v.$f === "string") {
      const n = Number(v.$f);
      return Number.isFinite(n) ? n : null;
    }
  }
  return null;
}

function walk(value, prefix, depth, out) {
  if (!value || typeof value !== "object" || Array.isArray(value)) return;
  for (const [key, child] of Object.entries(value)) {
    if (out.length >= MAX_FIELDS) return;
    if (!key || key.startsWith("$") || key.includes(".")) continue;
    const path = prefix ? prefix + "." + key : key;
    const n = numberOf(child);
    if (n !== null) out.push([path, n]);
    else if (depth + 1 < 4 && child && typeof child === "object" && !("$f" in child)) walk(child, path, depth + 1, out);
  }
}

function numericFields(content) {
  const out = [];
  if (!content || typeof content !== "object") return out;
  if (content.mqtt && typeof content.mqtt === "object") {
    const p = content.mqtt.payload;
    if (!p || (p.kind !== "json" && p.kind !== "cbor")) return out;
    let value = p.value;
    if (value === undefined && typeof p.text === "string") {
      // JSON kept as its exact text (the hub stores one representation; matrix_core/series.py)
      try { value = JSON.parse(p.text); } catch (e) { return out; }
    }
    const bare = numberOf(value);
    if (bare !== null) return [["value", bare]];
    walk(value, "", 0, out);
    return out;
  }
  walk(content, "", 0, out);
  return out;
}

function fmt(n) {
  if (typeof n !== "number") return String(n);
  return Math.abs(n) >= 1000 || Number.isInteger(n) ? String(Math.round(n * 100) / 100) : String(Number(n.toPrecision(4)));
}

// -- rooms -------------------------------------------------------------------------------------

function roomEntry(roomId) {
  let room = rooms.get(roomId);
  if (room) return room;
  room = {id: roomId, name: roomId, latest: null, fields: [], field: null, timer: null};
  const li = el("li", {"class": "room", "data-room-id": roomId});
  const h = el("h3", {}, roomId);
  const reading = el("p", {"class": "reading", "aria-live": "polite"}, "No reading yet");
  const when = el("p", {"class": "when"}, "");
  const label = el("label", {}, "Field ");
  const select = el("select", {"aria-label": "Field to plot"});
  label.appendChild(select);
  label.hidden = true;
  const plot = el("div", {"class": "plot"});
  li.append(h, reading, when, label, plot);
  $("rooms").appendChild(li);
  select.addEventListener("change", () => { room.field = select.value; schedulePlot(room, 0); });
  room.ui = {li, h, reading, when, select, label, plot};
  rooms.set(roomId, room);
  loadFields(room);
  return room;
}

function setName(room, state) {
  for (const ev of state) {
    if (ev.type === "m.room.name" && ev.content && typeof ev.content.name === "string" && ev.content.name) {
      room.name = ev.content.name;
    } else if (ev.type === "m.room.canonical_alias" && ev.content && typeof ev.content.alias === "string"
               && room.name === room.id) {
      room.name = ev.content.alias;
    }
  }
  room.ui.h.textContent = room.name;
}

function setFields(room, names) {
  let changed = false;
  for (const name of names) {
    if (!room.fields.includes(name)) { room.fields.push(name); changed = true; }
  }
  if (!changed) return;
  room.ui.select.replaceChildren(...room.fields.map((f) => el("option", {value: f}, f)));
  if (!room.field) room.field = room.fields[0];
  room.ui.select.value = room.field;
  room.ui.label.hidden = room.fields.length < 2;
  schedulePlot(room, 0);
}

async function loadFields(room) {
  try {
    const body = await api("GET", "/_gateway/v1/rooms/" + encodeURIComponent(room.id) + "/series/fields");
    setFields(room, body.fields || []);
  } catch (e) { /* a room we may not read: no plot */ }
}

function showReading(room, ev) {
  const fields = numericFields(ev.content);
  if (fields.length) {
    room.hasReading = true;
    room.ui.reading.textContent = fields.map(([k, v]) => k + " " + fmt(v)).join(" · ");
    setFields(room, fields.map(([k]) => k));
    schedulePlot(room, 100);
  } else if (ev.content && typeof ev.content.body === "string") {
    room.ui.reading.textContent = ev.content.body;
  } else {
    return;
  }
  room.ui.when.textContent = "from " + (ev.sender || "?") + " at " + new Date(ev.origin_server_ts).toLocaleTimeString();
}

// -- plots -------------------------------------------------------------------------------------

function schedulePlot(room, delay) {
  if (!room.field) return;
  clearTimeout(room.timer);
  room.timer = setTimeout(() => drawPlot(room), delay);
}

async function drawPlot(room) {
  const field = room.field;
  const range = session.rangeMs;
  let body;
  try {
    body = await api("GET", "/_gateway/v1/rooms/" + encodeURIComponent(room.id) + "/series?field="
                     + encodeURIComponent(field) + "&last=" + range + "&buckets=" + BUCKETS);
  } catch (e) { return; }
  if (field !== room.field || range !== session.rangeMs) return;  // the choice changed meanwhile
  const series = body.series || [];
  const w = 300, h = 100;
  const svg = svgEl("svg", {viewBox: "0 0 " + w + " " + h, preserveAspectRatio: "none", role: "img",
                            "data-field": field, "data-points": String(body.points)});
  let text;
  if (!series.length) {
    text = field + ": no readings in this range";
  } else {
    const lo = Math.min(...series.map((b) => b.min)), hi = Math.max(...series.map((b) => b.max));
    const span = hi - lo || 1;
    const x = (ts) => ((ts - body.from) / (body.to - body.from)) * w;
    const y = (v) => h - 4 - ((v - lo) / span) * (h - 8);
    const step = (body.to - body.from) / body.buckets;
    const top = series.map((b) => x(b.ts + step / 2) + "," + y(b.max));
    const bottom = series.slice().reverse().map((b) => x(b.ts + step / 2) + "," + y(b.min));
    svg.appendChild(svgEl("polygon", {"class": "band", points: top.concat(bottom).join(" ")}));
    svg.appendChild(svgEl("line", {"class": "axis-line", x1: 0, x2: w, y1: h - 0.5, y2: h - 0.5}));
    const line = series.map((b) => x(b.ts + step / 2) + "," + y(b.mean));
    svg.appendChild(svgEl("polyline", {"class": "line", points: line.join(" ")}));
    const last = series[series.length - 1];
    svg.appendChild(svgEl("path", {"class": "dot", d: "M" + x(last.ts + step / 2) + " " + y(last.last) + "h0"}));
    const latest = series[series.length - 1].last;
    text = field + ": latest " + fmt(latest) + ", range " + fmt(lo) + " to " + fmt(hi) + " over the last "
           + {3600000: "hour", 86400000: "day", 604800000: "week"}[range];
    svg.setAttribute("data-latest", String(latest));
    if (!room.hasReading) room.ui.reading.textContent = field + " " + fmt(latest);  // older than the timeline we got
  }
  svg.setAttribute("aria-label", text);
  const caption = el("p", {"class": "when"}, text);
  room.ui.plot.replaceChildren(svg, caption);
}

// -- sync --------------------------------------------------------------------------------------

function applySync(data) {
  const join = (data.rooms && data.rooms.join) || {};
  for (const [roomId, r] of Object.entries(join)) {
    const room = roomEntry(roomId);
    const timeline = (r.timeline && r.timeline.events) || [];
    setName(room, ((r.state && r.state.events) || []).concat(timeline.filter((e) => e.state_key !== undefined)));
    for (const ev of timeline) {
      if (ev.type === "m.room.message") showReading(room, ev);
    }
  }
  const leave = (data.rooms && data.rooms.leave) || {};
  for (const roomId of Object.keys(leave)) {
    const room = rooms.get(roomId);
    if (room) { room.ui.li.remove(); rooms.delete(roomId); }
  }
}

async function syncLoop() {
  session.running = true;
  let failures = 0;
  while (session.running && session.token) {
    const params = new URLSearchParams({filter: SYNC_FILTER, timeout: session.since ? "30000" : "0"});
    if (session.since) params.set("since", session.since);
    try {
      const data = await api("GET", API + "/sync?" + params.toString());
      if (!session.running) return;
      session.since = data.next_batch;
      applySync(data);
      failures = 0;
      $("status").textContent = rooms.size ? "" : "No rooms yet: devices' rooms appear here.";
    } catch (e) {
      if (e.status === 401) { signedOut(); return; }
      failures += 1;
      $("status").textContent = "Connection lost, retrying…";
      await new Promise((r) => setTimeout(r, Math.min(30000, 1000 * failures)));
    }
  }
}

// -- views -------------------------------------------------------------------------------------

function show(view) {
  $("login-view").hidden = view !== "login";
  $("home-view").hidden = view !== "home";
  $("status-view").hidden = view !== "status";
  $("devices-view").hidden = view !== "devices";
  if (view === "devices") loadDevices();
  $("nav").hidden = view === "login";
  clearInterval(session.statusTimer);
  if (view === "status") { loadStatus(); session.statusTimer = setInterval(loadStatus, 5000); }
}

function bytes(n) {
  if (typeof n !== "number") return "unknown";
  return n >= 1048576 ? (n / 1048576).toFixed(1) + " MB" : (n / 1024).toFixed(0) + " KB";
}

function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? d + " d " : "") + (d || h ? h + " h " : "") + m + " min";
}

async function loadDevices() {
  let body;
  try { body = await api("GET", API + "/devices"); } catch (e) { return; }
  const items = (body.devices || []).map((d) => {
    const seen = d.last_seen_ts ? " · last seen " + new Date(d.last_seen_ts).toLocaleString() : "";
    return el("li", {}, d.device_id + (d.display_name ? " (" + d.display_name + ")" : "") + seen);
  });
  $("device-list").replaceChildren(...items);
}

async function addDevice(event) {
  event.preventDefault();
  $("device-error").textContent = "";
  $("device-added").hidden = true;
  const name = $("device-name").value.trim();
  try {
    const body = await api("POST", "/_gateway/v1/devices",
                           Object.assign({device_id: $("device-id").value.trim()}, name ? {display_name: name} : {}));
    $("added-id").textContent = body.device_id;
    $("device-token").textContent = body.access_token;
    const user = body.user_id.slice(1).split(":")[0];
    $("device-snippet").textContent = "mosquitto_pub -h " + location.hostname + " -u '" + user + "' -P '"
      + body.access_token + "' -t home/" + body.device_id + "/reading -m '{\"temp\": 21.5}' -q 1";
    $("device-added").hidden = false;
    $("device-id").value = "";
    $("device-name").value = "";
    loadDevices();
  } catch (e) {
    $("device-error").textContent = e.status === 403 ? "Only hub admins may add devices." : e.message;
  }
}

async function loadStatus() {
  let body;
  try {
    body = await api("GET", "/_gateway/v1/status");
  } catch (e) {
    $("status-note").textContent = e.status === 403 ? "Only hub admins see the hub's status." : e.message;
    $("status-list").replaceChildren();
    return;
  }
  $("status-note").textContent = "";
  const rows = [["Version", body.version], ["Uptime", duration(body.uptime_s)], ["Memory (RSS)", bytes(body.rss_bytes)],
                ["Database size", bytes(body.database_bytes)],
                ["Events per minute", body.events_per_minute === null ? "measuring…" : String(body.events_per_minute)]];
  $("status-list").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function signedIn() {
  $("whoami").textContent = session.userId || "";
  show("home");
  syncLoop();
}

function signedOut() {
  session.running = false;
  session.token = null;
  session.since = null;
  localStorage.removeItem("hub.token");
  localStorage.removeItem("hub.user");
  rooms.clear();
  $("rooms").replaceChildren();
  show("login");
}

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    const body = await api("POST", API + "/login", {
      type: "m.login.password", identifier: {type: "m.id.user", user: $("login-user").value},
      password: $("login-password").value, initial_device_display_name: "Hub web page",
    });
    session.token = body.access_token;
    session.userId = body.user_id;
    localStorage.setItem("hub.token", session.token);
    localStorage.setItem("hub.user", session.userId);
    $("login-password").value = "";
    signedIn();
  } catch (e) {
    $("login-error").textContent = e.errcode === "M_FORBIDDEN" ? "Wrong user name or password." : e.message;
  }
}

async function logout() {
  try { await api("POST", API + "/logout", {}); } catch (e) { /* gone already */ }
  signedOut();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("go-home").addEventListener("click", () => show("home"));
  $("go-status").addEventListener("click", () => show("status"));
  $("go-devices").addEventListener("click", () => show("devices"));
  $("add-device-form").addEventListener("submit", addDevice);
  for (const radio of document.querySelectorAll("input[name=range]")) {
    radio.addEventListener("change", () => {
      session.rangeMs = Number(radio.value);
      for (const room of rooms.values()) schedulePlot(room, 0);
    });
  }
  setInterval(() => { for (const room of rooms.values()) schedulePlot(room, 0); }, 60000);
  if (session.token) signedIn(); else show("login");
});
