// A key's detail view: its fields, live secrets, usage chart and its own activity. Edit, roll and
// revoke open from here (keyform.js, roll.js, revoke.js); whatever changes the key, this view
// redraws from KEY_CHANGED.

import { activityItem, actorNode } from "./activity.js";
import { drawUsage } from "./chart.js";
import { graceLeft, requests } from "./format.js";
import { leakNote } from "./leak.js";
import { limitsSummary, renderLimitUsage } from "./limits.js";
import { activityPath, api, keyPath, state } from "./session.js";
import {
  $, canRevoke, copyIdButton, flagList, handleApiError, KEY_CHANGED, now, openDialog, replaceKey, scopeLabel,
  showError, STATUS_LABEL, text, timeCell,
} from "./ui.js";

export function openDetail(key, opener) {
  state.detail = key;
  showError("detail-error", "");
  showDetailNotice("");
  renderDetail(key);
  openDialog($("detail-dialog"), opener);
  $("detail-dialog").querySelector("[data-close]").focus();
  refreshDetail(key.id);
  loadUsage();
  loadKeyActivity(false);
}

export function showDetailNotice(message) {
  const el = $("detail-notice");
  el.textContent = message;
  el.hidden = !message;
}

// GET one key: the list's copy may be older, and the version it carries is what an edit sends.
async function refreshDetail(id) {
  try {
    const fresh = await api("GET", keyPath(id));
    if (state.detail && state.detail.id === id) replaceKey(fresh);
  } catch (err) {
    if (state.detail && state.detail.id === id) handleApiError(err, "detail-error");
  }
}

function field(name, ...values) {
  const dt = text("dt", name);
  const dd = document.createElement("dd");
  dd.append(...values);
  return [dt, dd];
}

function renderDetail(key) {
  state.detail = key;
  $("detail-title").textContent = key.name;
  $("detail-status").textContent = STATUS_LABEL[key.status] || key.status;
  $("detail-status").className = "badge " + key.status;
  $("detail-flags").replaceChildren(...flagList(key).childNodes);
  const manage = state.me && state.me.can_manage;
  $("detail-edit").hidden = !manage || key.status === "revoked";
  $("detail-roll").hidden = !manage || key.status !== "active";
  $("detail-revoke").hidden = !canRevoke(key);
  const idBox = document.createElement("span");
  idBox.className = "key-cell";
  idBox.append(text("code", key.id, "key-id"), copyIdButton(key));
  const never = (what) => text("span", what);
  $("detail-fields").replaceChildren(
    ...field("ID", idBox),
    ...field("Permissions", text("span", key.scopes.map((s) => `${scopeLabel(s)} (${s})`).join(", "))),
    ...field("Created", timeCell(key.created_at), " by ", actorNode(key.created_by)),
    ...field("Last used", key.last_used_at ? timeCell(key.last_used_at) : never("Never")),
    ...field("Requests", text("span", requests(key.request_count), "request-count")),
    ...field("Expires", key.expires_at ? timeCell(key.expires_at) : never("Never")),
    ...field("Limits", text("span", limitsSummary(key), "limits-text")),
    ...(key.revoked_at ? field("Revoked", timeCell(key.revoked_at), " by ", actorNode(key.revoked_by || "")) : []),
    ...(key.rolled_at ? field("Rolled", timeCell(key.rolled_at)) : []),
    ...(key.leak ? field("Leak report", timeCell(key.leak.found_at), " ", leakNote(key)) : []),
  );
  renderSecrets(key);
  renderLimitUsage(key);
}

// The live secrets, newest first. Before the roll branch the record has one: its prefix.
function renderSecrets(key) {
  const secrets = key.secrets && key.secrets.length ? key.secrets : [{ prefix: key.prefix, created_at: key.created_at, expires_at: null }];
  const items = secrets.map((secret, i) => {
    const li = document.createElement("li");
    li.dataset.prefix = secret.prefix;
    li.append(text("code", secret.prefix + "…"), " ", text("span", i === 0 ? "current" : "previous", "secret-kind"), ", created ", timeCell(secret.created_at));
    if (key.status === "revoked") li.append(text("span", " · refused: the key is revoked", "sub"));
    else if (i > 0 && secret.expires_at) {
      li.className = "previous";
      li.append(text("strong", ` · previous secret expires in ${graceLeft(secret.expires_at, now())}`, "grace"));
    }
    return li;
  });
  $("detail-secrets").replaceChildren(...items);
}

const DAY = 86400e3;
const RANGES = { // the range's length, its granularity, how the summary names it
  "24h": [DAY, "hour", "24 hours"], "7d": [7 * DAY, "day", "7 days"], "30d": [30 * DAY, "day", "30 days"], "90d": [90 * DAY, "day", "90 days"],
};

async function loadUsage() {
  const key = state.detail;
  if (!key) return;
  const range = document.querySelector("input[name='usage-range']:checked").value;
  const [length, granularity, label] = RANGES[range];
  const to = now();
  const params = new URLSearchParams({ from: new Date(to - length).toISOString(), to: new Date(to).toISOString(), granularity });
  showError("usage-error", "");
  $("usage-summary").textContent = "Loading requests…";
  try {
    const usage = await api("GET", keyPath(key.id, "/usage?" + params));
    if (!state.detail || state.detail.id !== key.id) return;
    drawUsage($("usage-chart"), $("usage-table"), usage);
    document.querySelector(".usage-details").hidden = false;
    const n = Object.values(usage.totals).reduce((a, b) => a + b, 0);
    $("usage-summary").textContent = `${requests(n)} in the last ${label}, per ${granularity} (UTC).`;
  } catch (err) {
    $("usage-summary").textContent = "";
    $("usage-chart").replaceChildren();
    $("usage-table").replaceChildren();
    document.querySelector(".usage-details").hidden = true;
    if (err.status === 401) handleApiError(err, "usage-error");
    else showError("usage-error", `The request history cannot be shown: ${err.message} (${err.code})`);
  }
}

export async function loadKeyActivity(more) {
  const key = state.detail;
  if (!key) return;
  const params = new URLSearchParams({ key_id: key.id, limit: "20" });
  if (more && state.detailCursor) params.set("cursor", state.detailCursor);
  showError("key-activity-error", "");
  try {
    const page = await api("GET", activityPath(params));
    if (!state.detail || state.detail.id !== key.id) return;
    // The key's own events only, even from an API that ignored key_id.
    const items = page.data.filter((e) => e.key_id === key.id).map((e) => activityItem(e, timeCell));
    if (more) $("key-activity").append(...items);
    else $("key-activity").replaceChildren(...items);
    state.detailCursor = page.next_cursor;
    $("key-activity-more").hidden = !page.next_cursor;
  } catch (err) {
    if (err.status === 401) handleApiError(err, "key-activity-error");
    else showError("key-activity-error", `The activity cannot be shown: ${err.message} (${err.code})`);
  }
}

$("detail-dialog").addEventListener("close", () => {
  const id = state.detail && state.detail.id;
  state.detail = null;
  // The row was redrawn while the view was open (edit, roll): focus its new name button.
  const button = id && $("keys-body").querySelector(`tr[data-key-id="${CSS.escape(id)}"] .key-title`);
  if (button && !document.activeElement.closest("#keys-body")) button.focus();
});

// Every change of a key shows here if it is the one open, its activity included.
document.addEventListener(KEY_CHANGED, (event) => {
  const key = event.detail;
  if (!state.detail || state.detail.id !== key.id) return;
  const changed = key.version !== state.detail.version;
  renderDetail(key);
  if (changed) loadKeyActivity(false);
  if (key.limit_usage === undefined) refreshDetail(key.id); // an edit's or roll's answer: usage comes with GET
});
for (const radio of document.querySelectorAll("input[name='usage-range']")) radio.addEventListener("change", loadUsage);
$("key-activity-more").addEventListener("click", () => loadKeyActivity(true));
