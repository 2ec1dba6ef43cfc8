// Status (admins): version, uptime, memory, database and media size, events per minute, federation
// peers, MQTT uplinks; refreshed every 5 s. And the backup download.
import {$, el, api, bytes, duration, session} from "./common.js";

let timer = null;

function time(ts) { return ts ? new Date(ts).toLocaleString() : "never"; }

/** A dd holding "none" or a list, one item per peer/uplink. */
function listOrNone(items) {
  if (!items.length) return el("dd", {}, "none");
  const dd = el("dd", {});
  const ul = el("ul", {"class": "plain"});
  ul.append(...items.map((text) => el("li", {}, text)));
  dd.append(ul);
  return dd;
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
                ["Events per minute", body.events_per_minute === null ? "measuring…" : String(body.events_per_minute)],
                ["Media size", bytes(body.media_bytes) + " (" + body.media_count + " files)"]];
  const peers = (body.federation_peers || []).map((p) => p.server_name + ": " + p.state
    + (p.state === "backing off" ? " (retry in " + Math.round(p.backoff_s) + " s" + (p.last_error ? ": " + p.last_error : "") + ")" : "")
    + ", last success " + time(p.last_success_ts) + (p.queued ? ", " + p.queued + " queued" : ""));
  const uplinks = (body.uplinks || []).map((u) => u.name + ": " + u.state + (u.detail ? " (" + u.detail + ")" : "")
    + ", backlog " + u.backlog + " events");
  $("status-list").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]),
                                   el("dt", {}, "Federation peers"), listOrNone(peers),
                                   el("dt", {}, "MQTT uplinks"), listOrNone(uplinks));
}

/** The archive streams from the hub; the browser saves it under the hub's dated name. The token
 * goes in a header (never in a URL, where history and logs would keep it). */
async function downloadBackup() {
  const button = $("backup-download");
  button.disabled = true;
  $("backup-note").textContent = "Making the backup…";
  try {
    const resp = await fetch("/_gateway/admin/v1/backup", {headers: {Authorization: "Bearer " + session.token}});
    if (!resp.ok) {
      let message = "HTTP " + resp.status;
      try { message = (await resp.json()).error || message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    const match = /filename="([^"]+)"/.exec(resp.headers.get("Content-Disposition") || "");
    const name = match ? match[1] : "matrix-gateway-backup.tar.gz";
    const url = URL.createObjectURL(await resp.blob());
    const a = el("a", {href: url, download: name, hidden: ""});
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    $("backup-note").textContent = "Saved " + name + ".";
  } catch (e) {
    $("backup-note").textContent = "Backup failed: " + e.message;
  } finally {
    button.disabled = false;
  }
}

export function init() { $("backup-download").addEventListener("click", downloadBackup); }
export function enter() { loadStatus(); timer = setInterval(loadStatus, 5000); }
export function leave() { clearInterval(timer); timer = null; }
