// MQTT (admins): the topic rules (map/unmap, as `matrix-gateway mqtt map/unmap/maps`) and a live
// tree of the topics seen with their last values.
//
// The tree long-polls GET /_gateway/admin/v1/mqtt/topics?since=N&timeout=20000 rather than
// polling every 2 s: the hub answers the moment a topic changes (well within 2 s) and sends only
// the topics that changed, and while nothing happens a tab costs one idle request per 20 s
// instead of a full answer every 2 s (a phone's battery, a Pi's CPU). Leaving the page aborts it.
import {$, el, api} from "./common.js";

const ADMIN = "/_gateway/admin/v1/mqtt";
const POLL_MS = 20000;

const topics = new Map();  // topic -> {topic, value, ts, room_id, retained}
let since = 0;
let poller = null;  // AbortController of the running long-poll loop

function note(text) { $("mqtt-note").textContent = text; }

function denied(e) {
  if (e.status !== 403) return false;
  note("Only hub admins manage MQTT topic rules and see the topics.");
  return true;
}

// -- rules -------------------------------------------------------------------------------------

async function loadRules() {
  let body;
  try { body = await api("GET", ADMIN + "/rules"); } catch (e) { if (!denied(e)) note(e.message); return; }
  const items = body.rules.map((rule) => {
    const li = el("li", {"class": "rule"});
    li.append(el("code", {}, rule.topic_filter), document.createTextNode(" → "), el("code", {}, rule.room_id), " ");
    const button = el("button", {type: "button", "aria-label": "Unmap " + rule.topic_filter}, "Unmap");
    button.addEventListener("click", () => unmap(rule.topic_filter));
    li.append(button);
    return li;
  });
  if (!items.length) items.push(el("li", {}, "No rules: topics go to their default rooms."));
  $("rule-list").replaceChildren(...items);
}

async function map(event) {
  event.preventDefault();
  $("map-error").textContent = "";
  try {
    await api("POST", ADMIN + "/rules", {topic_filter: $("map-filter").value.trim(), room: $("map-room").value.trim()});
    $("map-filter").value = "";
    $("map-room").value = "";
    await loadRules();
  } catch (e) {
    $("map-error").textContent = e.status === 404 ? "No such room on this hub." : e.message;
  }
}

async function unmap(filter) {
  $("map-error").textContent = "";
  try { await api("DELETE", ADMIN + "/rules/" + encodeURIComponent(filter)); } catch (e) { $("map-error").textContent = e.message; }
  await loadRules();
}

// -- the topic tree ----------------------------------------------------------------------------

function when(ts) {
  const d = new Date(ts);
  return Date.now() - ts > 86400000 ? d.toLocaleString() : d.toLocaleTimeString();
}

/** Nested lists by topic level: each level a list item, a topic's own value beside its name. */
function renderTree() {
  const root = {children: new Map()};
  for (const entry of topics.values()) {
    let node = root;
    for (const level of entry.topic.split("/")) {
      if (!node.children.has(level)) node.children.set(level, {children: new Map()});
      node = node.children.get(level);
    }
    node.entry = entry;
  }
  const build = (node) => [...node.children.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([name, child]) => {
    const li = el("li", {});
    li.append(el("span", {"class": "level"}, name === "" ? "(empty)" : name));
    if (child.entry) {
      const e = child.entry;
      li.setAttribute("data-topic", e.topic);
      li.append(" ", el("code", {"class": "value", title: e.topic}, e.value === "" ? "(cleared)" : e.value), " ",
                el("time", {datetime: new Date(e.ts).toISOString()}, when(e.ts)));
      if (e.retained) li.append(" ", el("span", {"class": "retained"}, "retained"));
    }
    if (child.children.size) {
      const ul = el("ul", {});
      ul.append(...build(child));
      li.append(ul);
    }
    return li;
  });
  const items = build(root);
  $("topic-tree").replaceChildren(...(items.length ? items : [el("li", {}, "No topics seen yet.")]));
}

async function pollTopics(controller) {
  while (!controller.signal.aborted) {
    let body;
    try {
      body = await api("GET", ADMIN + "/topics?since=" + since + "&timeout=" + (since ? POLL_MS : 0), undefined,
                       controller.signal);
    } catch (e) {
      if (controller.signal.aborted || denied(e)) return;
      note("Topics: " + e.message + " (retrying)");
      await new Promise((resolve) => setTimeout(resolve, 2000));
      continue;
    }
    if (controller.signal.aborted) return;
    if (!body.broker) { $("topics-note").textContent = "The MQTT broker is not running on this hub."; return; }
    for (const t of body.topics) topics.set(t.topic, t);
    since = body.next;
    $("topics-note").textContent = body.truncated && body.topics.length
      ? "Last value of each topic seen, live (the most recent " + topics.size + " shown)."
      : "Last value of each topic seen, live.";
    if (body.topics.length) renderTree();
  }
}

export function init() { $("map-form").addEventListener("submit", map); }

export function enter() {
  note("");
  loadRules();
  topics.clear();
  since = 0;
  renderTree();
  poller = new AbortController();
  pollTopics(poller);
}

export function leave() {
  if (poller) poller.abort();
  poller = null;
}
