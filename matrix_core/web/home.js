// Home: each room as a place/device with its latest reading and a plot from the series API
// (docs/series-api.md), kept live by /sync long-polls.
import {API, session, $, el, svgEl, api} from "./common.js";

const SYNC_FILTER = JSON.stringify({
  room: {timeline: {limit: 10}, state: {types: ["m.room.name", "m.room.canonical_alias"]}},
  presence: {not_types: ["*"]}, account_data: {not_types: ["*"]},
});
const BUCKETS = 120;
const MAX_FIELDS = 16;

const rooms = new Map();  // room id -> {id, name, latest, fields, field, el, refresh}

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
      if (e.status === 401) { window.dispatchEvent(new Event("hub-signed-out")); return; }
      failures += 1;
      $("status").textContent = "Connection lost, retrying…";
      await new Promise((r) => setTimeout(r, Math.min(30000, 1000 * failures)));
    }
  }
}

/** Signed in: start the long-poll loop. */
export function start() { syncLoop(); }

/** Signed out: stop the loop and forget the rooms. */
export function stop() {
  session.running = false;
  rooms.clear();
  $("rooms").replaceChildren();
}

export function init() {
  for (const radio of document.querySelectorAll("input[name=range]")) {
    radio.addEventListener("change", () => {
      session.rangeMs = Number(radio.value);
      for (const room of rooms.values()) schedulePlot(room, 0);
    });
  }
  setInterval(() => { for (const room of rooms.values()) schedulePlot(room, 0); }, 60000);
}

export function enter() {}
export function leave() {}
