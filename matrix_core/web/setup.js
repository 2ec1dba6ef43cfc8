// First run: while the hub has no admin, this view creates one with the one-time setup code the
// hub printed on its console and in its log (POST /_gateway/v1/setup answers like /login).
import {$, api, errorText, session} from "./common.js";

const SETUP = "/_gateway/v1/setup";

/** Whether the hub wants its first admin (a failed check: show sign-in as before). A hub that
 * does not gets no setup form at all: the view leaves the document. */
export async function needed() {
  let first = false;
  try { first = (await api("GET", SETUP)).setup_needed === true; } catch (e) { first = false; }
  if (!first) done();
  return first;
}

function done() {
  const view = $("setup-view");
  if (view) view.remove();
}

/** `signIn(body)` takes /login's answer (user_id, access_token, device_id). */
export function init(signIn) {
  if (session.token) { done(); return; }
  $("setup-form").addEventListener("submit", (event) => submit(event, signIn));
}

async function submit(event, signIn) {
  event.preventDefault();
  const error = $("setup-error");
  error.textContent = "";
  if ($("setup-password").value !== $("setup-password-again").value) {
    error.textContent = "The two passwords differ.";
    return;
  }
  try {
    const body = await api("POST", SETUP, {
      setup_code: $("setup-code").value, username: $("setup-user").value, password: $("setup-password").value,
    });
    for (const id of ["setup-code", "setup-password", "setup-password-again"]) $(id).value = "";
    done();
    signIn(body);
  } catch (e) {
    error.textContent = errorText(e);
  }
}
