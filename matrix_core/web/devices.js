// Devices: the signed-in account's own devices; for hub admins also every account with its devices
// (Revoke per device) and "Add device", which shows the token (and coaps key) once, a QR code of
// the settings and ready-to-paste snippets. Admin calls: docs/admin-api.md. Text only via textContent.
import {API, session, $, el, api} from "./common.js";

const ADMIN = "/_gateway/admin/v1";
let isAdmin = false;

function seen(ts) {
  return ts ? new Date(ts).toLocaleString() : "never";
}

async function loadOwn() {
  let body;
  try { body = await api("GET", API + "/devices"); } catch (e) { return; }
  const items = (body.devices || []).map((d) => {
    const when = d.last_seen_ts ? " · last seen " + seen(d.last_seen_ts) : "";
    return el("li", {}, d.device_id + (d.display_name ? " (" + d.display_name + ")" : "") + when);
  });
  $("device-list").replaceChildren(...items);
}

function flags(user) {
  const parts = [user.admin ? "admin" : "member", user.is_guest ? "guest" : "household"];
  if (user.deactivated) parts.push("deactivated");
  return parts.join(" · ");
}

function deviceRow(user, d) {
  const tr = el("tr");
  tr.append(el("td", {}, d.device_id), el("td", {}, d.display_name || ""), el("td", {}, seen(d.last_seen_ts)));
  const cell = el("td");
  const revoke = el("button", {type: "button", "aria-label": "Revoke " + d.device_id + " of " + user.name}, "Revoke");
  revoke.addEventListener("click", () => revokeDevice(user.name, d.device_id));
  cell.append(revoke);
  tr.append(cell);
  return tr;
}

function accountBlock(user) {
  const block = el("section", {class: "account", "aria-label": "Account " + user.name});
  block.append(el("h4", {}, user.name + (user.displayname ? " (" + user.displayname + ")" : "")),
               el("p", {class: "flags"}, flags(user)));
  if (!user.devices.length) {
    block.append(el("p", {class: "when"}, "No devices."));
    return block;
  }
  const table = el("table");
  table.append(el("caption", {}, "Devices of " + user.name));
  const head = el("tr");
  for (const name of ["Device", "Name", "Last seen", "Action"]) head.append(el("th", {scope: "col"}, name));
  const thead = el("thead");
  thead.append(head);
  const tbody = el("tbody");
  tbody.append(...user.devices.map((d) => deviceRow(user, d)));
  table.append(thead, tbody);
  const wrap = el("div", {class: "scroll"});
  wrap.append(table);
  block.append(wrap);
  return block;
}

async function loadAccounts() {
  let body;
  try { body = await api("GET", ADMIN + "/accounts"); } catch (e) {
    $("devices-note").textContent = "Could not list the accounts: " + e.message;
    return;
  }
  $("accounts").replaceChildren(...body.users.map(accountBlock));
  const select = $("device-user");
  const chosen = select.value || session.userId;
  const options = body.users.filter((u) => !u.deactivated).map((u) => {
    const option = el("option", {value: u.name}, u.name);
    option.selected = u.name === chosen;
    return option;
  });
  select.replaceChildren(...options);
}

async function revokeDevice(userId, deviceId) {
  if (!window.confirm("Revoke " + deviceId + " of " + userId + "? Its token stops working at once.")) return;
  try {
    await api("DELETE", "/_synapse/admin/v2/users/" + encodeURIComponent(userId) + "/devices/"
              + encodeURIComponent(deviceId));
    $("devices-note").textContent = "Revoked " + deviceId + " of " + userId + ".";
  } catch (e) {
    $("devices-note").textContent = "Could not revoke " + deviceId + ": " + e.message;
  }
  await Promise.all([loadAccounts(), loadOwn()]);
}

function showSnippets(snippets) {
  const parts = [];
  snippets.forEach((s, i) => {
    const id = "snippet-" + i;
    parts.push(el("p", {id, class: "snippet-label"}, s.label), el("pre", {"aria-labelledby": id}, s.text));
  });
  $("device-snippets").replaceChildren(...parts);
}

async function addDevice(event) {
  event.preventDefault();
  $("device-error").textContent = "";
  $("device-added").hidden = true;
  const name = $("device-name").value.trim();
  const user = $("device-user").value || session.userId;
  const body = {device_id: $("device-id").value.trim(), psk: $("device-psk").checked};
  if (name) body.display_name = name;
  let answer;
  try {
    answer = await api("POST", ADMIN + "/users/" + encodeURIComponent(user) + "/devices", body);
  } catch (e) {
    $("device-error").textContent = e.status === 403 ? "Only hub admins may add devices." : e.message;
    return;
  }
  $("added-id").textContent = answer.device_id + " of " + answer.user_id;
  $("device-token").textContent = answer.access_token;
  $("added-psk").hidden = !answer.psk;
  $("added-psk-identity").textContent = answer.psk_identity || "";
  $("device-psk-key").textContent = answer.psk || "";
  $("device-qr").src = answer.qr_code;  // a data:image/svg+xml URI made by the hub (CSP: img-src data:)
  showSnippets(answer.snippets || []);
  $("device-added").hidden = false;
  $("device-id").value = "";
  $("device-name").value = "";
  $("device-psk").checked = false;
  await Promise.all([loadAccounts(), loadOwn()]);
}

export function init() { $("add-device-form").addEventListener("submit", addDevice); }

export async function enter() {
  $("devices-note").textContent = "";
  loadOwn();
  try {
    isAdmin = (await api("GET", "/_gateway/v1/account")).admin === true;
  } catch (e) {
    isAdmin = false;
  }
  $("admin-devices").hidden = !isAdmin;
  if (isAdmin) loadAccounts();
}

export function leave() {
  // the token and key are shown once: leaving the page forgets them
  $("device-added").hidden = true;
  $("device-token").textContent = "";
  $("device-psk-key").textContent = "";
  $("device-qr").removeAttribute("src");
  $("device-snippets").replaceChildren();
}
