// What every part of the page draws with: elements, times, errors and notices, a key's flags and
// copy buttons, and the dialogs (focus stays inside, Escape closes, focus returns to the opener).
// SECURITY: user-supplied strings go in through textContent or a form value, never innerHTML.

import { keyFlags, relative, utcText } from "./format.js";
import { state } from "./session.js";

export const $ = (id) => document.getElementById(id);

export const now = () => Date.now();

// "3 min ago", with the exact UTC time on hover (title) and focus (the label, and the CSS tip).
export function timeCell(iso) {
  const el = document.createElement("time");
  el.dateTime = iso;
  el.textContent = relative(iso, now());
  el.title = utcText(iso);
  el.tabIndex = 0;
  el.setAttribute("aria-label", `${el.textContent}, ${el.title}`);
  return el;
}

export function text(tag, value, className) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (className) el.className = className;
  return el;
}

export const STATUS_LABEL = { active: "Active", expired: "Expired", revoked: "Revoked" };

export function showError(id, message) {
  const el = $(id);
  el.textContent = message || "";
  el.hidden = !message;
}

export function setFieldError(inputId, errorId, message) {
  const input = $(inputId);
  $(errorId).textContent = message || "";
  if (message) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
}

// A 401 in the middle of the session (key revoked, token rotated) sends the admin back to sign in
// (the page's entry module listens for SIGNED_OUT); any other error is shown in ``bannerId``.
export const SIGNED_OUT = "api-keys:signed-out";
export const KEY_CHANGED = "api-keys:key-changed";

export function handleApiError(err, bannerId) {
  if (err.handled) return; // the session's own errors: the page already changed view (session.js hooks)
  if (err.status === 401) {
    document.dispatchEvent(new CustomEvent(SIGNED_OUT, { detail: `You were signed out: ${err.message} (${err.code})` }));
    return;
  }
  showError(bannerId, `${err.message} (${err.code})`);
}

export function scopeLabel(scope) {
  const known = state.permissions.find((p) => p.scope === scope);
  return known ? known.label : scope;
}

export function flagList(key) {
  const box = document.createElement("span");
  box.className = "flags";
  for (const flag of keyFlags(key, now())) box.append(text("span", flag.text, "flag " + flag.kind));
  return box;
}

export async function copyText(value, button, announce) {
  let ok = true;
  try {
    await navigator.clipboard.writeText(value);
  } catch (err) {
    ok = false;
  }
  const label = button.textContent;
  button.textContent = ok ? "Copied" : "Copy failed";
  $("copy-announce").textContent = ok ? announce : `Copy failed: select ${value} and copy it by hand.`;
  setTimeout(() => { if (button.isConnected) button.textContent = label; }, 2000);
}

export function copyIdButton(key) {
  const copy = text("button", "Copy ID", "button small copy-id");
  copy.type = "button";
  copy.setAttribute("aria-label", `Copy the ID of ${key.name}`);
  copy.addEventListener("click", () => copyText(key.id, copy, `Key ID ${key.id} copied to the clipboard.`));
  return copy;
}

export function canRevoke(key) {
  return key.status !== "revoked" && state.me && state.me.can_manage;
}

// A key changed (edit, roll, revoke, or a fresher copy): the list and the detail view, listening
// for KEY_CHANGED, show the new record.
export function replaceKey(updated) {
  const index = state.keys.findIndex((k) => k.id === updated.id);
  if (index >= 0) state.keys[index] = updated;
  document.dispatchEvent(new CustomEvent(KEY_CHANGED, { detail: updated }));
}

export function showNotice(message) {
  const el = $("notice");
  el.textContent = message;
  el.hidden = !message;
}

// ---------- dialogs: focus stays inside, Escape closes, focus returns to the opener ----------

const openers = new WeakMap();

export function openDialog(dialog, opener) {
  openers.set(dialog, opener || document.activeElement);
  dialog.showModal();
}

function focusables(dialog) {
  return [...dialog.querySelectorAll("button, input, select, textarea, [href], [tabindex]:not([tabindex='-1'])")]
    .filter((el) => !el.disabled && !el.hidden && el.offsetParent !== null);
}

for (const dialog of document.querySelectorAll("dialog")) {
  dialog.addEventListener("keydown", (event) => {
    if (event.key !== "Tab") return;
    const items = focusables(dialog);
    if (items.length === 0) return;
    const first = items[0];
    const last = items[items.length - 1];
    if (event.shiftKey && document.activeElement === first) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && document.activeElement === last) {
      event.preventDefault();
      first.focus();
    }
  });
  dialog.addEventListener("close", () => {
    const opener = openers.get(dialog);
    if (opener && opener.isConnected) opener.focus();
    else $("keys-title").focus();
  });
  for (const button of dialog.querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => dialog.close());
  }
}
