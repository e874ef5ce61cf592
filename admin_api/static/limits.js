// A key's limits on the page: the key form's "Limits" rows (create and edit), and the detail view's
// limits (the key's own, or the default) with how much of each window is used and when it resets.

import { limitsText } from "./format.js";
import { $, text, timeCell } from "./ui.js";

// gateway.ratelimit.WINDOWS and MAX_LIMIT (tests/unit/test_model.py checks the copies).
export const WINDOWS = ["second", "minute", "hour", "day", "month"];
export const MAX_LIMIT = 999999999999999;
const QUOTAS = new Set(["day", "month"]);
const WINDOW_LABEL = {
  second: "per second", minute: "per minute", hour: "per hour", day: "per day (quota)", month: "per month (quota)",
};

const number = (n) => n.toLocaleString("en-US");

// What the detail view says: the key's own limits, else the default it gets, else none.
export function limitsSummary(key) {
  const effective = key.effective_limits || [];
  if (key.limits) return limitsText(key.limits);
  return effective.length ? `Default: ${limitsText(effective)}` : "None: this key's requests are not limited";
}

// ---------- the form's rows ----------

let rowCount = 0;

function rows() {
  return [...$("limit-rows").querySelectorAll("li")];
}

function syncRows() {
  const n = rows().length;
  $("limit-add").disabled = n >= WINDOWS.length;
  $("limit-none").hidden = n !== 0;
  for (const li of rows()) {
    const window = li.querySelector("select").value;
    li.querySelector("button").setAttribute("aria-label", `Remove the ${WINDOW_LABEL[window].replace(" (quota)", "")} limit`);
  }
}

function makeRow(limit) {
  const n = ++rowCount;
  const li = document.createElement("li");
  li.className = "limit-row";
  const select = document.createElement("select");
  select.id = `limit-window-${n}`;
  select.className = "limit-window";
  for (const window of WINDOWS) {
    const option = text("option", WINDOW_LABEL[window]);
    option.value = window;
    select.append(option);
  }
  select.value = limit.window;
  const input = document.createElement("input");
  input.id = `limit-value-${n}`;
  input.className = "limit-value";
  input.type = "text";
  input.inputMode = "numeric";
  input.autocomplete = "off";
  input.value = limit.limit === "" ? "" : String(limit.limit);
  const error = text("p", "", "field-error");
  error.id = `limit-error-${n}`;
  input.setAttribute("aria-describedby", `${error.id} limits-error`);
  select.setAttribute("aria-describedby", `${error.id} limits-error`);
  const windowLabel = text("label", "Window");
  windowLabel.htmlFor = select.id;
  const valueLabel = text("label", "Requests");
  valueLabel.htmlFor = input.id;
  const remove = text("button", "Remove", "button small subtle");
  remove.type = "button";
  remove.addEventListener("click", () => {
    const next = li.nextElementSibling || li.previousElementSibling;
    li.remove();
    syncRows();
    (next ? next.querySelector("input") : $("limit-add")).focus();
  });
  select.addEventListener("change", () => { setRowError(li, ""); syncRows(); });
  input.addEventListener("input", () => setRowError(li, ""));
  const windowBox = document.createElement("span");
  windowBox.append(windowLabel, select);
  const valueBox = document.createElement("span");
  valueBox.append(valueLabel, input);
  li.append(valueBox, windowBox, remove, error);
  return li;
}

function setRowError(li, message) {
  li.querySelector(".field-error").textContent = message;
  for (const el of li.querySelectorAll("input, select")) {
    if (message) el.setAttribute("aria-invalid", "true");
    else el.removeAttribute("aria-invalid");
  }
}

// The rows of ``limits`` (a key's own; null or [] for none).
export function setLimitRows(limits) {
  $("limit-rows").replaceChildren(...(limits || []).map(makeRow));
  setLimitsError("");
  syncRows();
}

function addRow() {
  const used = new Set(rows().map((li) => li.querySelector("select").value));
  const window = WINDOWS.find((w) => !used.has(w)) || "minute";
  const li = makeRow({ window, limit: "" });
  $("limit-rows").append(li);
  syncRows();
  li.querySelector("input").focus();
}

// The rows as the API takes them, shortest window first: {limits} (null: none), or {invalid: the
// first field at fault}, with each row's message shown.
export function readLimits() {
  setLimitsError("");
  const limits = [];
  const seen = new Set();
  let invalid = null;
  for (const li of rows()) {
    const window = li.querySelector("select").value;
    const raw = li.querySelector("input").value.trim().replace(/[,_ ]/g, "");
    let message = "";
    let at = "input";
    if (!/^[0-9]+$/.test(raw) || Number(raw) < 1 || Number(raw) > MAX_LIMIT) {
      message = `Enter a whole number of requests from 1 to ${number(MAX_LIMIT)}.`;
    } else if (seen.has(window)) {
      message = `There is already a limit ${WINDOW_LABEL[window].replace(" (quota)", "")}: one limit per window.`;
      at = "select";
    }
    setRowError(li, message);
    if (message) invalid = invalid || li.querySelector(at);
    seen.add(window);
    limits.push({ window, limit: Number(raw) });
  }
  if (invalid) return { invalid };
  limits.sort((a, b) => WINDOWS.indexOf(a.window) - WINDOWS.indexOf(b.window));
  return { limits: limits.length ? limits : null };
}

// An error of the whole section (the API's, naming the field "limits").
export function setLimitsError(message) {
  $("limits-error").textContent = message || "";
  const fieldset = $("limits-fieldset");
  if (message) fieldset.setAttribute("aria-invalid", "true");
  else fieldset.removeAttribute("aria-invalid");
}

export function focusLimits() {
  const first = $("limit-rows").querySelector("input");
  (first || $("limit-add")).focus();
}

export function sameLimits(a, b) {
  const norm = (limits) => JSON.stringify((limits || []).map((l) => [l.window, l.limit]));
  return norm(a) === norm(b) && (a === null) === (b === null);
}

$("limit-add").addEventListener("click", addRow);

// ---------- the detail view ----------

// The enforced limits and what their current windows have used: a bar per limit, with the reset.
export function renderLimitUsage(key) {
  const list = $("limit-usage");
  const effective = key.effective_limits || [];
  $("limits-summary").textContent = `${limitsSummary(key)}.`;
  if (key.limit_usage === undefined) return; // a changed key's answer without usage: the next read brings it
  showLimitUsageError(key.limit_usage === null && effective.length > 0);
  $("limits-converge").hidden = !(key.limit_usage && key.limit_usage.length);
  list.replaceChildren(...(key.limit_usage || []).map((usage) => {
    const li = document.createElement("li");
    li.dataset.window = usage.window;
    const name = `${number(usage.limit)} ${WINDOW_LABEL[usage.window]}`;
    const used = Math.min(usage.used, usage.limit);
    const share = usage.limit ? Math.round((100 * usage.used) / usage.limit) : 0;
    const bar = document.createElement("progress");
    bar.max = usage.limit;
    bar.value = used;
    bar.setAttribute("aria-label", `${name}: ${number(usage.used)} used`);
    if (usage.used >= usage.limit) li.className = "full";
    const head = document.createElement("span");
    head.className = "limit-head";
    head.append(text("strong", name), " ", text("span", `${number(usage.used)} used (${share}%)`, "limit-used"));
    const reset = document.createElement("span");
    reset.className = "sub";
    if (QUOTAS.has(usage.window)) reset.append("Resets ", timeCell(usage.resets_at));
    else reset.append(`Resets every ${usage.window}`);
    li.append(head, bar, reset);
    return li;
  }));
}

function showLimitUsageError(show) {
  const el = $("limit-usage-error");
  el.textContent = show ? "What the limits have used cannot be shown right now (the key store did not answer); " +
    "the limits still apply." : "";
  el.hidden = !show;
}
