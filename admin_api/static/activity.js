// The activity log as the page shows it: what an event says in words (pure), and its table row or
// list item. Events never hold a secret; "secret" changes are display prefixes.

import { limitsText, utcText } from "./format.js";

export const ACTION_LABEL = {
  "api_key.created": "Created",
  "api_key.updated": "Edited",
  "api_key.rolled": "Rolled the secret",
  "api_key.revoked": "Revoked",
  "api_key.leaked": "Reported leaked",
  "org.settings_updated": "Changed the org's settings",
};

// Who did it, as shown and as told on hover: "operator" -> "Operator"; "key:key_abc" -> "Key key_abc";
// a person, "user:<sub> <email>" -> their e-mail with the subject in the title ("user:<sub>": the subject).
export function actorParts(actor) {
  if (actor === "operator") return { label: "Operator", title: "" };
  if (actor.startsWith("key:")) return { label: `Key ${actor.slice(4)}`, title: "" };
  if (actor === "secret_scanning:github") return { label: "GitHub secret scanning", title: actor };
  const person = /^user:(\S+)(?: <?([^<>\s]+)>?)?$/.exec(actor);
  if (person) return { label: person[2] || person[1], title: `Subject ${person[1]}` };
  return { label: actor, title: "" };
}

export function actorLabel(actor) {
  return actorParts(actor).label;
}

// The actor as an element: its label, and the subject on hover for a person.
export function actorNode(actor, tag = "span", className = "actor") {
  const { label, title } = actorParts(actor);
  const node = cell(tag, label, className);
  if (title) node.title = title;
  return node;
}

function shown(value) {
  if (value === null || value === undefined) return "none";
  if (Array.isArray(value)) return value.length ? value.join(", ") : "none";
  return String(value);
}

function when(value) {
  if (value === null || value === undefined) return "never";
  const ms = typeof value === "number" ? value : Date.parse(value);
  return Number.isNaN(ms) ? String(value) : utcText(new Date(ms).toISOString());
}

// One line per changed field: "Name: “A” → “B”", "Permissions: added tasks:write; removed files:read".
export function describeChanges(changes) {
  const lines = [];
  for (const [field, change] of Object.entries(changes || {})) {
    const { before, after } = change;
    if (field === "name") lines.push(`Name: “${shown(before)}” → “${shown(after)}”`);
    else if (field === "scopes") {
      const was = new Set(before || []);
      const now = new Set(after || []);
      const added = [...now].filter((s) => !was.has(s));
      const removed = [...was].filter((s) => !now.has(s));
      const parts = [];
      if (added.length) parts.push(`added ${added.join(", ")}`);
      if (removed.length) parts.push(`removed ${removed.join(", ")}`);
      lines.push(`Permissions: ${parts.join("; ") || shown(after)}`);
    } else if (field === "expires_at") lines.push(`Expiry: ${when(before)} → ${when(after)}`);
    else if (field === "secret") lines.push(`Secret: ${shown(before)}… → ${shown(after)}…`);
    else if (field === "limits") lines.push(`Limits: ${before ? limitsText(before) : "the default"} → ${after ? limitsText(after) : "the default"}`);
    else if (field === "previous_secret_expires_at") lines.push(`Previous secret works until ${when(after)}`);
    else if (field === "leak_action") lines.push(`Leak action: ${before === "flag" ? "flag" : "revoke"} → ${after === "flag" ? "flag, leave active" : "revoke"}`);
    else if (field === "leak" && !after) lines.push("Leak mark cleared: the leaked secret was rolled away");
    else if (field === "leak" && after) lines.push(`Found at ${after.url || "an unnamed place"} (${after.source || "unknown source"}, reported by ${after.scanner}); ${after.action === "flag" ? "flagged, left active" : "revoked"}`);
    else lines.push(`${field}: ${shown(before)} → ${shown(after)}`);
  }
  return lines;
}

function cell(tag, value, className) {
  const node = document.createElement(tag);
  node.textContent = value;
  if (className) node.className = className;
  return node;
}

function changesList(event) {
  const list = document.createElement("ul");
  list.className = "changes";
  for (const line of describeChanges(event.changes)) list.append(cell("li", line));
  return list;
}

// A row of the org's activity table. ``keyName(id)`` names a key the page has loaded, else null.
export function activityRow(event, keyName, timeCell) {
  const tr = document.createElement("tr");
  tr.dataset.eventId = event.id || `${event.key_id}:${event.at}`;
  tr.dataset.action = event.action;
  const at = cell("td", "");
  at.dataset.label = "When";
  at.append(timeCell(event.at));
  const what = cell("td", ACTION_LABEL[event.action] || event.action, "action");
  what.dataset.label = "What";
  const key = cell("td", "");
  key.dataset.label = "Key";
  const ref = cell("span", "", "key-ref"); // one box: on a narrow screen the cell is label + value
  if (event.key_id) {
    const name = keyName(event.key_id);
    if (name) ref.append(cell("span", name, "key-title"), " ");
    ref.append(cell("code", event.key_id));
  } else {
    ref.append(cell("span", "Org settings", "key-title")); // org.settings_updated names no key
  }
  key.append(ref);
  const by = actorNode(event.actor, "td");
  by.dataset.label = "By";
  const changes = cell("td", "");
  changes.dataset.label = "Changes";
  changes.append(changesList(event));
  tr.append(at, what, key, by, changes);
  return tr;
}

// An item of a key's own activity in its detail view.
export function activityItem(event, timeCell) {
  const li = document.createElement("li");
  li.dataset.action = event.action;
  li.append(cell("strong", ACTION_LABEL[event.action] || event.action), " by ", actorNode(event.actor), ", ", timeCell(event.at));
  li.append(changesList(event));
  return li;
}
