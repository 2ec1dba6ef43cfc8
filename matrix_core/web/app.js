// The hub's own page: a small Matrix client (login, /sync long-polls). This module signs in and out
// and switches pages; each page is its own module with init() once, enter() when shown and
// leave() when hidden. No framework, no build step.
import {API, session, $, api, errorText} from "./common.js";
import * as home from "./home.js";
import * as devices from "./devices.js";
import * as status from "./status.js";
import * as setup from "./setup.js";
import * as mqtt from "./mqtt.js";

// view name -> {module, section id, nav button id}; a new page adds one line here and its
// <section> and nav button in index.html.
const PAGES = {
  home: {module: home, section: "home-view", button: "go-home"},
  devices: {module: devices, section: "devices-view", button: "go-devices"},
  status: {module: status, section: "status-view", button: "go-status"},
  mqtt: {module: mqtt, section: "mqtt-view", button: "go-mqtt"},
};

let current = null;

function show(view) {
  if (current && PAGES[current]) PAGES[current].module.leave();
  $("login-view").hidden = view !== "login";
  if ($("setup-view")) $("setup-view").hidden = view !== "setup";
  for (const [name, page] of Object.entries(PAGES)) {
    $(page.section).hidden = view !== name;
    $(page.button).setAttribute("aria-current", view === name ? "page" : "false");
  }
  $("nav").hidden = view === "login" || view === "setup";
  current = view;
  if (PAGES[view]) PAGES[view].module.enter();
}

function signedIn() {
  $("whoami").textContent = session.userId || "";
  show("home");
  home.start();
}

function signedOut() {
  home.stop();
  session.token = null;
  session.since = null;
  localStorage.removeItem("hub.token");
  localStorage.removeItem("hub.user");
  show("login");
}

/** Keep /login's (or the first run's) answer and show Home. */
function signIn(body) {
  session.token = body.access_token;
  session.userId = body.user_id;
  localStorage.setItem("hub.token", session.token);
  localStorage.setItem("hub.user", session.userId);
  signedIn();
}

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    const body = await api("POST", API + "/login", {
      type: "m.login.password", identifier: {type: "m.id.user", user: $("login-user").value},
      password: $("login-password").value, initial_device_display_name: "Hub web page",
    });
    $("login-password").value = "";
    signIn(body);
  } catch (e) {
    $("login-error").textContent = e.errcode === "M_FORBIDDEN" ? "Wrong user name or password." : errorText(e);
  }
}

async function logout() {
  try { await api("POST", API + "/logout", {}); } catch (e) { /* gone already */ }
  signedOut();
}

function start() {
  $("login-form").addEventListener("submit", login);
  setup.init(signIn);
  $("logout").addEventListener("click", logout);
  window.addEventListener("hub-signed-out", signedOut);
  for (const [name, page] of Object.entries(PAGES)) {
    $(page.button).addEventListener("click", () => show(name));
    page.module.init();
  }
  // A hub without an admin shows the first run's setup view instead of sign-in.
  if (session.token) signedIn(); else setup.needed().then((first) => show(first ? "setup" : "login"));
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
