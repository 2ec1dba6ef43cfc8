// Devices: the signed-in account's devices, and "Add device" (admins) showing the token once.
import {API, $, el, api} from "./common.js";

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

export function init() { $("add-device-form").addEventListener("submit", addDevice); }
export function enter() { loadDevices(); }
export function leave() {}
