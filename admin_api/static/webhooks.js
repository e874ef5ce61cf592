// The Webhooks tab: the org's endpoints, the add dialog (its signing secret shown once), a test-send
// button and the recent deliveries of one endpoint. SECURITY: URLs and descriptions go in through
// textContent, never innerHTML; the secret lives only in the dialog until it is closed.

import { api, state } from "./session.js";
import { $, handleApiError, openDialog, setFieldError, showError, text, timeCell } from "./ui.js";

// gateway.events.EVENT_TYPES, with the page's words.
export const EVENT_LABEL = {
  "api_key.created": "Key created",
  "api_key.updated": "Key edited",
  "api_key.rolled": "Secret rolled",
  "api_key.revoked": "Key revoked",
  "api_key.leaked": "Key leaked",
  "api_key.expiring": "Key expiring",
  "api_key.expired": "Key expired",
  "api_key.unused": "Key unused",
};

const STATE_LABEL = { pending: "Pending", delivered: "Delivered", dead: "Failed (dead letter)" };
let showing = null; // the endpoint whose deliveries are shown

function hooksPath(suffix = "") {
  return `/v1/orgs/${encodeURIComponent(state.session.orgId)}/webhooks${suffix}`;
}

export function eventsText(events) {
  if (!events.length || events.includes("*")) return "All events";
  return events.map((e) => EVENT_LABEL[e] || e).join(", ");
}

export async function loadWebhooks() {
  const manage = Boolean(state.me && state.me.can_manage);
  $("webhook-add").hidden = !manage;
  showError("webhooks-error", "");
  try {
    const page = await api("GET", hooksPath());
    $("webhooks-body").replaceChildren(...page.data.map((h) => hookRow(h, manage)));
    $("webhooks-table").hidden = page.data.length === 0;
    $("webhooks-empty").hidden = page.data.length !== 0;
  } catch (err) {
    if (err.status === 404 && err.code === "org_not_found") {
      $("webhooks-body").replaceChildren();
      $("webhooks-table").hidden = true;
      $("webhooks-empty").hidden = false;
      return;
    }
    handleApiError(err, "webhooks-error");
  }
}

function hookRow(hook, manage) {
  const tr = document.createElement("tr");
  tr.dataset.webhookId = hook.id;
  const url = text("td", hook.url, "url");
  if (hook.description) url.append(text("div", hook.description, "muted"));
  const actions = document.createElement("td");
  actions.className = "actions-cell";
  const deliveries = text("button", "Deliveries", "button small");
  deliveries.type = "button";
  deliveries.setAttribute("aria-label", `Recent deliveries to ${hook.url}`);
  deliveries.addEventListener("click", () => showDeliveries(hook));
  actions.append(deliveries);
  if (manage) {
    const test = text("button", "Send test", "button small");
    test.type = "button";
    test.setAttribute("aria-label", `Send a test event to ${hook.url}`);
    test.addEventListener("click", () => sendTest(hook, test));
    const remove = text("button", "Delete", "button small danger");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete the endpoint ${hook.url}`);
    remove.addEventListener("click", () => deleteHook(hook, remove));
    actions.append(test, remove);
  }
  const created = document.createElement("td");
  created.append(timeCell(hook.created_at));
  tr.append(url, text("td", eventsText(hook.events)), created, actions);
  return tr;
}

function notice(message) {
  const el = $("webhooks-notice");
  el.textContent = message;
  el.hidden = !message;
}

async function sendTest(hook, button) {
  button.disabled = true;
  try {
    const queued = await api("POST", hooksPath(`/${encodeURIComponent(hook.id)}/test`));
    notice(`A test event (${queued.event_id}) is on its way to ${hook.url}.`);
    await showDeliveries(hook);
  } catch (err) {
    handleApiError(err, "webhooks-error");
  } finally {
    button.disabled = false;
  }
}

async function deleteHook(hook, button) {
  if (!window.confirm(`Delete the endpoint ${hook.url}? Nothing more is sent to it.`)) return;
  button.disabled = true;
  try {
    await api("DELETE", hooksPath(`/${encodeURIComponent(hook.id)}`));
    notice(`The endpoint ${hook.url} was deleted.`);
    if (showing && showing.id === hook.id) $("deliveries-view").hidden = true;
    await loadWebhooks();
  } catch (err) {
    button.disabled = false;
    handleApiError(err, "webhooks-error");
  }
}

async function showDeliveries(hook) {
  showing = hook;
  $("deliveries-url").textContent = hook.url;
  $("deliveries-view").hidden = false;
  try {
    const page = await api("GET", hooksPath(`/${encodeURIComponent(hook.id)}/deliveries`));
    $("deliveries-body").replaceChildren(...page.data.map(deliveryRow));
    $("deliveries-table").hidden = page.data.length === 0;
    $("deliveries-empty").hidden = page.data.length !== 0;
  } catch (err) {
    handleApiError(err, "webhooks-error");
  }
}

function deliveryRow(d) {
  const tr = document.createElement("tr");
  tr.dataset.eventId = d.event_id;
  tr.dataset.state = d.state;
  const last = d.status_code !== null ? `HTTP ${d.status_code}` : d.error || "—";
  const next = document.createElement("td");
  if (d.next_attempt_at && d.state === "pending") next.append(timeCell(d.next_attempt_at));
  else next.textContent = "—";
  tr.append(text("td", d.event_id, "mono"), text("td", EVENT_LABEL[d.type] || d.type),
    text("td", STATE_LABEL[d.state] || d.state, "status " + d.state), text("td", String(d.attempts)),
    text("td", d.error && d.status_code !== null ? `${last}: ${d.error}` : last), next);
  return tr;
}

// ---------- the add dialog ----------

function eventBoxes() {
  return [...$("webhook-events").querySelectorAll("input[data-event]")];
}

function openAdd() {
  $("webhook-form").reset();
  $("webhook-form").hidden = false;
  $("webhook-secret-view").hidden = true;
  $("webhook-secret").value = "";
  setFieldError("webhook-url", "webhook-url-error", "");
  showError("webhook-error", "");
  for (const box of eventBoxes()) box.disabled = true;
  openDialog($("webhook-dialog"), $("webhook-add"));
  $("webhook-url").focus();
}

async function submitAdd(event) {
  event.preventDefault();
  const url = $("webhook-url").value.trim();
  setFieldError("webhook-url", "webhook-url-error", "");
  showError("webhook-error", "");
  if (!url) {
    setFieldError("webhook-url", "webhook-url-error", "Enter the URL events are sent to.");
    $("webhook-url").focus();
    return;
  }
  const events = $("webhook-all").checked ? ["*"] : eventBoxes().filter((b) => b.checked).map((b) => b.dataset.event);
  if (!events.length) {
    showError("webhook-error", "Choose at least one event, or all events.");
    return;
  }
  const button = $("webhook-submit");
  button.disabled = true;
  try {
    const made = await api("POST", hooksPath(), { url, events, description: $("webhook-description").value.trim() });
    $("webhook-form").hidden = true;
    $("webhook-secret-view").hidden = false;
    $("webhook-secret").value = made.secret;
    $("webhook-secret").focus();
    $("webhook-secret").select();
    loadWebhooks();
  } catch (err) {
    if (err.field === "url") {
      setFieldError("webhook-url", "webhook-url-error", err.message);
      $("webhook-url").focus();
    } else if (err.status === 401) handleApiError(err, "webhook-error");
    else showError("webhook-error", `${err.message} (${err.code})`);
  } finally {
    button.disabled = false;
  }
}

for (const [type, label] of Object.entries(EVENT_LABEL)) {
  const row = document.createElement("label");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.dataset.event = type;
  box.disabled = true;
  row.append(box, " " + label);
  $("webhook-events").append(row);
}
$("webhook-all").addEventListener("change", () => {
  for (const box of eventBoxes()) box.disabled = $("webhook-all").checked;
});
$("webhook-add").addEventListener("click", openAdd);
$("webhook-form").addEventListener("submit", submitAdd);
$("webhook-secret-done").addEventListener("click", () => {
  $("webhook-secret").value = "";
  $("webhook-dialog").close();
});
$("webhook-dialog").addEventListener("cancel", (event) => {
  if (!$("webhook-secret-view").hidden) event.preventDefault(); // closed only once the secret was copied
});
$("deliveries-refresh").addEventListener("click", () => showing && showDeliveries(showing));
