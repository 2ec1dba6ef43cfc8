// Status (admins): version, uptime, memory, database, events per minute; refreshed every 5 s.
import {$, el, api, bytes, duration} from "./common.js";

let timer = null;

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

export function init() {}
export function enter() { loadStatus(); timer = setInterval(loadStatus, 5000); }
export function leave() { clearInterval(timer); timer = null; }
