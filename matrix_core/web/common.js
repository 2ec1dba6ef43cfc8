// Shared by the pages (ES modules, no build step): the session, DOM helpers and the API call.
// Every user-provided string goes in through textContent or attributes, never as markup.

export const API = "/_matrix/client/v3";

export const session = {token: localStorage.getItem("hub.token"), userId: localStorage.getItem("hub.user"),
                        since: null, running: false, rangeMs: 3600000};

export function $(id) { return document.getElementById(id); }

export function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
export function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

/** A JSON call with the session's token; a non-2xx answer throws an Error with status and errcode.
 * `signal`: an AbortSignal to cancel it (a long-poll when its page is left). */
export async function api(method, path, body, signal) {
  const headers = {};
  if (session.token) headers.Authorization = "Bearer " + session.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body)});
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const err = new Error((data && data.error) || ("HTTP " + resp.status));
    err.status = resp.status;
    err.errcode = data && data.errcode;
    err.retryAfterMs = data && data.retry_after_ms;
    throw err;
  }
  return data;
}

/** An error for people: a throttle says how long to wait (M_LIMIT_EXCEEDED, retry_after_ms). */
export function errorText(e) {
  if (e.errcode === "M_LIMIT_EXCEEDED") {
    const s = Math.max(1, Math.ceil((e.retryAfterMs || 1000) / 1000));
    return "Too many wrong attempts: wait " + (s >= 120 ? Math.ceil(s / 60) + " minutes" : s + " s") + " and try again.";
  }
  return e.message;
}

export function bytes(n) {
  if (typeof n !== "number") return "unknown";
  return n >= 1048576 ? (n / 1048576).toFixed(1) + " MB" : (n / 1024).toFixed(0) + " KB";
}

export function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? d + " d " : "") + (d || h ? h + " h " : "") + m + " min";
}
