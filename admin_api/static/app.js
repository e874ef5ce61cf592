// Settings -> API Keys. Plain JavaScript modules, no build step, no third-party code.
// SECURITY: every user-supplied string goes into the page through textContent or a form value,
// never through innerHTML; the credential lives in sessionStorage only; the secret of a new key
// lives only in the reveal dialog's text box and is wiped when that dialog closes (which the admin
// must confirm).

import { canRead, grantable, groupLabel, MANAGE, READ } from "./permissions.js";
import { keyFlags, previousSecret, relative, requests, span, utcText } from "./format.js";
import { STATUS_FILTERS, visibleKeys } from "./listview.js";
import { drawUsage } from "./chart.js";
import { activityItem, activityRow, actorLabel } from "./activity.js";

const SESSION_KEY = "api-keys-session";
const PAGE_SIZE = 25;
const ORG_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const FIELD_INPUTS = { name: "key-name", expires_in: "key-expiry", scopes: "perm-search" };
const FIELD_ERRORS = { name: "key-name-error", expires_in: "key-expiry-error", scopes: "perm-error" };

const $ = (id) => document.getElementById(id);

const state = {
  session: null, // {credential, orgId}
  me: null, // GET /v1/me
  keys: [],
  cursor: null,
  generation: 0, // bumps on every fresh load so late pages of an old list are dropped
  loading: false,
  permissions: [],
  selected: new Set(),
  creating: false,
  revoking: null,
  retry: null, // re-runs the list load that failed
  revealClosing: false, // the reveal dialog may close: the admin confirmed the copy, or signs out
  view: { status: "current", query: "", sort: "created", dir: "descending" }, // over the loaded keys
  editing: null, // the key the form edits (null: the form creates), with the version it loaded
  detail: null, // the key open in the detail view
  detailCursor: null, // the next page of its activity
  activityCursor: null, // the next page of the org's activity
  rolling: false,
};

class ApiError extends Error {
  constructor(status, error) {
    super(error && error.message ? error.message : `The server answered ${status}.`);
    this.status = status;
    this.code = error && error.code ? error.code : "http_" + status;
    this.field = error && error.field ? error.field : null;
  }
}

async function api(method, path, body, credential = state.session && state.session.credential, extra = {}) {
  const headers = { Accept: "application/json", Authorization: "Bearer " + credential, ...extra };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, { code: "network_error", message: "The admin API cannot be reached. Check your connection and try again." });
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, data && data.error);
  }
  return data;
}

function keyPath(id, suffix = "") {
  return orgPath(`/${encodeURIComponent(id)}${suffix}`);
}

function activityPath(params) {
  return `/v1/orgs/${encodeURIComponent(state.session.orgId)}/audit-events?${params}`;
}

function orgPath(suffix = "") {
  return `/v1/orgs/${encodeURIComponent(state.session.orgId)}/api-keys${suffix}`;
}

// ---------- formatting ----------

const now = () => Date.now();

// "3 min ago", with the exact UTC time on hover (title) and focus (the label, and the CSS tip).
function timeCell(iso) {
  const el = document.createElement("time");
  el.dateTime = iso;
  el.textContent = relative(iso, now());
  el.title = utcText(iso);
  el.tabIndex = 0;
  el.setAttribute("aria-label", `${el.textContent}, ${el.title}`);
  return el;
}

function text(tag, value, className) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (className) el.className = className;
  return el;
}

const STATUS_LABEL = { active: "Active", expired: "Expired", revoked: "Revoked" };

// ---------- sign in / out ----------

function showError(id, message) {
  const el = $(id);
  el.textContent = message || "";
  el.hidden = !message;
}

function setFieldError(inputId, errorId, message) {
  const input = $(inputId);
  $(errorId).textContent = message || "";
  if (message) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
}

async function signIn(event) {
  event.preventDefault();
  const credential = $("credential").value.trim();
  let orgId = $("org-id").value.trim();
  setFieldError("credential", "credential-error", "");
  setFieldError("org-id", "org-id-error", "");
  if (!credential) {
    setFieldError("credential", "credential-error", "Enter an operator token or an API key.");
    $("credential").focus();
    return;
  }
  if (orgId && !ORG_ID.test(orgId)) {
    setFieldError("org-id", "org-id-error", "An organization ID is 1-64 letters, digits, '.', '_' or '-'.");
    $("org-id").focus();
    return;
  }
  const submit = $("sign-in-submit");
  submit.disabled = true;
  try {
    const me = await api("GET", "/v1/me", undefined, credential);
    if (me.operator && !orgId) {
      setFieldError("org-id", "org-id-error", "An operator token acts on any organization: enter the organization ID.");
      $("org-id").focus();
      return;
    }
    if (!me.operator) {
      if (orgId && orgId !== me.org_id) {
        setFieldError("org-id", "org-id-error", `This API key belongs to organization “${me.org_id}”. Leave the field empty or enter that ID.`);
        $("org-id").focus();
        return;
      }
      orgId = me.org_id;
      if (!canRead(me)) {
        setFieldError("credential", "credential-error", NO_ACCESS);
        $("credential").focus();
        return;
      }
    }
    state.session = { credential, orgId };
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(state.session));
    $("credential").value = "";
    enterKeysView(me);
  } catch (err) {
    setFieldError("credential", "credential-error", `${err.message} (${err.code})`);
    $("credential").focus();
  } finally {
    submit.disabled = false;
  }
}

const NO_ACCESS = `This API key cannot view or manage API keys: it needs the ${READ} or ${MANAGE} permission. ` +
  "Sign in with a key that holds one of them, or with an operator token.";

function signOut(message) {
  sessionStorage.removeItem(SESSION_KEY);
  state.session = null;
  state.me = null;
  state.keys = [];
  state.generation += 1;
  state.revealClosing = true; // signing out wipes a secret still on screen
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  $("keys-body").replaceChildren();
  $("keys-view").hidden = true;
  $("who").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in-view").hidden = false;
  setFieldError("credential", "credential-error", message || "");
  $("credential").focus();
}

function enterKeysView(me) {
  state.me = me;
  $("sign-in-view").hidden = true;
  $("keys-view").hidden = false;
  const who = me.operator ? `Operator · organization ${state.session.orgId}` : `Organization ${state.session.orgId} · key ${me.actor.slice(4)}`;
  $("who").textContent = who;
  $("who").hidden = false;
  $("sign-out").hidden = false;
  selectTab("keys");
  $("create-open").hidden = !me.can_manage;
  $("empty-create").hidden = !me.can_manage;
  if (!me.can_manage) {
    showNotice("This key can view the list but not create or revoke keys (that needs the api_keys:manage permission).");
  } else {
    showNotice("");
  }
  loadPermissions().finally(() => loadKeys());
}

async function loadPermissions() {
  try {
    state.permissions = (await api("GET", "/v1/permissions")).data;
  } catch (err) {
    state.permissions = []; // the list still works, showing scopes instead of labels
  }
}

// A 401 in the middle of the session (key revoked, token rotated) sends the admin back to sign in.
function handleApiError(err, bannerId) {
  if (err.status === 401) {
    signOut(`You were signed out: ${err.message} (${err.code})`);
    return;
  }
  showError(bannerId, `${err.message} (${err.code})`);
}

// No answer, or a server-side fault (503 while the store is down): worth another try.
function retryable(err) {
  return err.status === 0 || err.status === 429 || err.status >= 500;
}

function showListError(err, retry) {
  if (err.status === 401) {
    handleApiError(err, "list-error");
    return;
  }
  state.retry = retryable(err) ? retry : null;
  $("list-error-text").textContent = `${err.message} (${err.code})`;
  $("list-retry").hidden = !state.retry;
  $("list-error").hidden = false;
}

function clearListError() {
  state.retry = null;
  $("list-error").hidden = true;
  $("list-error-text").textContent = "";
}

function retryList() {
  const retry = state.retry;
  if (!retry || state.loading) return;
  clearListError();
  retry();
}

// ---------- the list ----------

// ``all``: follow next_cursor to the last page (so that filter, search and sort cover every key).
async function loadKeys(more = false, all = false) {
  if (!more) {
    state.generation += 1;
    state.keys = [];
    state.cursor = null;
    $("keys-body").replaceChildren();
  }
  const generation = state.generation;
  state.loading = true;
  $("loading").hidden = false;
  $("load-more").hidden = true;
  clearListError();
  const include = STATUS_FILTERS[state.view.status].revoked;
  try {
    do {
      const params = new URLSearchParams({ limit: String(PAGE_SIZE), include_revoked: String(include) });
      if (state.cursor) params.set("cursor", state.cursor);
      const page = await api("GET", orgPath("?" + params));
      if (generation !== state.generation) return;
      state.keys.push(...page.data);
      state.cursor = page.next_cursor;
      renderRows();
    } while (all && state.cursor);
  } catch (err) {
    if (generation !== state.generation) return;
    // An org exists from its first key on: for an operator, a new org is an empty list.
    if (err.status === 404 && err.code === "org_not_found" && !more) return;
    // The labels may have failed with the list (a network error at sign-in): fetch them again too.
    showListError(err, () => (state.permissions.length ? Promise.resolve() : loadPermissions()).then(() => loadKeys(more, all)));
  } finally {
    if (generation === state.generation) {
      state.loading = false;
      $("loading").hidden = true;
      renderListChrome();
    }
  }
}

// The rows the filter, the search and the sort leave, from the keys loaded so far.
function renderRows() {
  const shown = visibleKeys(state.keys, state.view);
  $("keys-body").replaceChildren(...shown.map(keyRow));
  for (const th of document.querySelectorAll("#keys-table th[data-sort]")) {
    th.setAttribute("aria-sort", th.dataset.sort === state.view.sort ? state.view.dir : "none");
  }
  const sortName = document.querySelector(`#keys-table th[data-sort="${state.view.sort}"] .sort`).textContent.trim();
  $("keys-caption").textContent = `Your organization's API keys, sorted by ${sortName.toLowerCase()}, ${state.view.dir}`;
  renderListChrome();
}

function renderListChrome() {
  const count = state.keys.length;
  const shown = $("keys-body").childElementCount;
  const filtered = state.view.query.trim() !== "" || !["current", "all"].includes(state.view.status);
  $("keys-table").hidden = count === 0 || shown === 0;
  $("empty-state").hidden = count !== 0 || !$("list-error").hidden;
  $("empty-state").querySelector("h2").textContent = STATUS_FILTERS[state.view.status].revoked
    ? "No API keys, revoked or otherwise" : "No API keys yet";
  $("load-more").hidden = !state.cursor;
  const loaded = `${count} key${count === 1 ? "" : "s"}`;
  $("list-count").textContent = count === 0 ? "" : filtered || shown !== count
    ? `${shown} of ${loaded} loaded match` : `${loaded}${state.cursor ? " shown, more below" : ""}`;
  // Truthful about pagination: the filter, the search and the sort see the loaded pages only.
  $("list-scope-text").textContent = state.cursor
    ? `Filter, search and sort apply to the ${loaded} loaded so far; more keys exist.`
    : count === 0 ? "" : "Filter, search and sort apply to all of this organization's keys in this list.";
  $("load-all").hidden = !state.cursor;
  if (count !== 0 && shown === 0) $("list-count").textContent = `No loaded key matches (${loaded} loaded).`;
}

function scopeLabel(scope) {
  const known = state.permissions.find((p) => p.scope === scope);
  return known ? known.label : scope;
}

function flagList(key) {
  const box = document.createElement("span");
  box.className = "flags";
  for (const flag of keyFlags(key, now())) box.append(text("span", flag.text, "flag " + flag.kind));
  return box;
}

async function copyText(value, button, announce) {
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

function copyIdButton(key) {
  const copy = text("button", "Copy ID", "button small copy-id");
  copy.type = "button";
  copy.setAttribute("aria-label", `Copy the ID of ${key.name}`);
  copy.addEventListener("click", () => copyText(key.id, copy, `Key ID ${key.id} copied to the clipboard.`));
  return copy;
}

function canRevoke(key) {
  return key.status !== "revoked" && state.me && state.me.can_manage;
}

function keyRow(key) {
  const tr = document.createElement("tr");
  tr.dataset.keyId = key.id;
  tr.className = "is-" + key.status;

  const name = document.createElement("td");
  name.className = "name";
  name.dataset.label = "Name";
  const nameBox = document.createElement("div");
  const open = text("button", key.name, "key-title link");
  open.type = "button";
  open.setAttribute("aria-label", `${key.name}: open details`);
  open.addEventListener("click", () => openDetail(key, open));
  const scopes = text("span", key.scopes.map(scopeLabel).join(", "), "scopes");
  scopes.title = key.scopes.join(" ");
  nameBox.append(open, scopes, flagList(key));
  name.append(nameBox);

  const prefix = document.createElement("td");
  prefix.dataset.label = "Key";
  prefix.className = "key-cell";
  prefix.append(text("code", key.prefix + "…", "prefix"), text("code", key.id, "key-id"), copyIdButton(key));

  const created = document.createElement("td");
  created.dataset.label = "Created";
  created.className = "created";
  created.append(timeCell(key.created_at), text("span", `by ${actorLabel(key.created_by)}`, "sub created-by"));

  const lastUsed = document.createElement("td");
  lastUsed.dataset.label = "Last used";
  lastUsed.className = "last-used";
  if (key.last_used_at) lastUsed.append(timeCell(key.last_used_at));
  else {
    const dash = text("span", "—");
    dash.title = "Never used";
    dash.setAttribute("aria-label", "Never used");
    lastUsed.append(dash);
  }
  lastUsed.append(text("span", requests(key.request_count), "sub request-count"));

  const expires = document.createElement("td");
  expires.dataset.label = "Expires";
  expires.className = "expires";
  if (key.expires_at) expires.append(timeCell(key.expires_at));
  else expires.textContent = "Never";

  const status = document.createElement("td");
  status.dataset.label = "Status";
  status.append(text("span", STATUS_LABEL[key.status] || key.status, "badge " + key.status));

  const actions = document.createElement("td");
  actions.className = "actions-cell";
  if (canRevoke(key)) {
    const button = text("button", "Revoke", "button small");
    button.type = "button";
    button.setAttribute("aria-label", `Revoke ${key.name}`);
    button.addEventListener("click", () => openRevoke(key, button));
    actions.append(button);
  }

  tr.append(name, prefix, created, lastUsed, expires, status, actions);
  return tr;
}

// A key changed (edit, roll, revoke): the list and the detail view show the new record.
function replaceKey(updated) {
  const index = state.keys.findIndex((k) => k.id === updated.id);
  if (index >= 0) state.keys[index] = updated;
  const row = $("keys-body").querySelector(`tr[data-key-id="${CSS.escape(updated.id)}"]`);
  if (row) row.replaceWith(keyRow(updated));
  if (state.detail && state.detail.id === updated.id) renderDetail(updated);
}

function showNotice(message) {
  const el = $("notice");
  el.textContent = message;
  el.hidden = !message;
}

// ---------- dialogs: focus stays inside, Escape closes, focus returns to the opener ----------

const openers = new WeakMap();

function openDialog(dialog, opener) {
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

// ---------- create ----------

// The one key form: it creates a key (``key`` null) or edits one, keeping the version it loaded.
function resetKeyForm(key) {
  const form = $("create-form");
  form.reset();
  state.editing = key ? { key, version: key.version } : null;
  const keep = $("key-expiry").querySelector("option[value='']");
  if (keep) keep.remove();
  if (key) {
    const option = text("option", key.expires_at ? `Keep the current expiry (${utcText(key.expires_at)})` : "Keep: never expires");
    option.value = "";
    $("key-expiry").prepend(option);
    $("key-expiry").value = "";
    $("key-name").value = key.name;
  }
  $("create-title").textContent = key ? `Edit “${key.name}”` : "Create API Key";
  $("create-submit").textContent = key ? "Save" : "Create";
  state.selected = new Set(key ? key.scopes : []);
  for (const field of Object.keys(FIELD_ERRORS)) setFieldError(FIELD_INPUTS[field], FIELD_ERRORS[field], "");
  showError("create-error", "");
}

async function openCreate(event) {
  resetKeyForm(null);
  await openKeyForm(event.currentTarget);
}

function openEdit(event) {
  resetKeyForm(state.detail);
  return openKeyForm(event.currentTarget);
}

async function openKeyForm(opener) {
  $("perm-groups").replaceChildren(text("p", "Loading permissions…", "muted"));
  openDialog($("create-dialog"), opener);
  $("key-name").focus();
  try {
    state.permissions = (await api("GET", "/v1/permissions")).data; // fresh: scopes.yaml may have changed
    renderPermissions();
  } catch (err) {
    $("perm-groups").replaceChildren();
    handleApiError(err, "create-error");
  }
}

function renderPermissions() {
  const query = $("perm-search").value.trim().toLowerCase();
  const groups = new Map();
  for (const perm of state.permissions) {
    if (!groups.has(perm.resource)) groups.set(perm.resource, []);
    groups.get(perm.resource).push(perm);
  }
  const container = $("perm-groups");
  container.replaceChildren();
  let shown = 0;
  for (const [resource, perms] of groups) {
    const visible = perms.filter((p) => !query || p.label.toLowerCase().includes(query) || p.scope.toLowerCase().includes(query));
    if (visible.length === 0) continue;
    shown += visible.length;
    const group = document.createElement("div");
    group.className = "perm-group";
    group.dataset.resource = resource;

    const enabled = visible.filter((p) => grantable(state.me, p.scope));
    const name = groupLabel(resource);
    const all = document.createElement("input");
    all.type = "checkbox";
    all.className = "select-all";
    all.id = "perm-all-" + resource;
    all.disabled = enabled.length === 0;
    const picked = enabled.filter((p) => state.selected.has(p.scope)).length;
    all.checked = enabled.length > 0 && picked === enabled.length;
    all.indeterminate = picked > 0 && picked < enabled.length;
    all.setAttribute("aria-label", `Select all ${name} permissions`);
    all.addEventListener("change", () => {
      for (const p of enabled) {
        if (all.checked) state.selected.add(p.scope);
        else state.selected.delete(p.scope);
      }
      renderPermissions();
      $("perm-all-" + resource).focus();
    });
    const head = document.createElement("label");
    head.htmlFor = all.id;
    head.append(all, " ", name);

    const list = document.createElement("ul");
    for (const perm of visible) {
      const li = document.createElement("li");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = perm.scope;
      box.id = "perm-" + perm.scope.replace(/[^A-Za-z0-9_-]/g, "-");
      box.checked = state.selected.has(perm.scope);
      box.disabled = !grantable(state.me, perm.scope);
      box.addEventListener("change", () => {
        if (box.checked) state.selected.add(perm.scope);
        else state.selected.delete(perm.scope);
        setFieldError(FIELD_INPUTS.scopes, FIELD_ERRORS.scopes, "");
        syncSelectAll(group, enabled);
        renderSelectedCount();
      });
      const label = document.createElement("label");
      label.htmlFor = box.id;
      if (box.disabled) {
        label.className = "disabled";
        label.title = "Your key does not hold this permission, so it cannot grant it.";
      }
      const scope = text("code", perm.scope);
      scope.id = box.id + "-scope";
      box.setAttribute("aria-label", perm.label); // the label is the name; the scope describes it
      box.setAttribute("aria-describedby", scope.id);
      label.append(box, text("span", perm.label), scope);
      li.append(label);
      list.append(li);
    }
    group.append(head, list);
    container.append(group);
  }
  $("perm-none").hidden = shown !== 0;
  renderSelectedCount();
}

function syncSelectAll(group, enabled) {
  const all = group.querySelector(".select-all");
  const picked = enabled.filter((p) => state.selected.has(p.scope)).length;
  all.checked = enabled.length > 0 && picked === enabled.length;
  all.indeterminate = picked > 0 && picked < enabled.length;
}

function renderSelectedCount() {
  const n = state.selected.size;
  $("perm-selected").textContent = n === 0 ? "No permissions selected." : `${n} permission${n === 1 ? "" : "s"} selected: ${[...state.selected].map(scopeLabel).join(", ")}.`;
}

async function submitCreate(event) {
  event.preventDefault();
  if (state.creating) return; // no double creation, whatever the input method
  for (const field of Object.keys(FIELD_ERRORS)) setFieldError(FIELD_INPUTS[field], FIELD_ERRORS[field], "");
  showError("create-error", "");
  const name = $("key-name").value.trim();
  let invalid = null;
  if (!name) {
    setFieldError("key-name", "key-name-error", "Enter a name, for example “Zapier production”.");
    invalid = invalid || $("key-name");
  }
  if (state.selected.size === 0) {
    setFieldError("perm-search", "perm-error", "Select at least one permission.");
    invalid = invalid || $("perm-search");
  }
  if (invalid) {
    invalid.focus();
    return;
  }
  const body = { name, expires_in: $("key-expiry").value, scopes: state.permissions.map((p) => p.scope).filter((s) => state.selected.has(s)) };
  const editing = state.editing;
  state.creating = true;
  const submit = $("create-submit");
  submit.disabled = true;
  submit.textContent = editing ? "Saving…" : "Creating…";
  try {
    if (editing) {
      await saveEdit(editing, body);
      return;
    }
    const created = await api("POST", orgPath(), body);
    if ($("create-dialog").open) $("create-dialog").close();
    reveal(created, `Your new API key “${created.name}”`);
  } catch (err) {
    if (err.status === 412 && editing) {
      await reloadAfterConflict(editing);
    } else if (err.status === 401) {
      handleApiError(err, "create-error");
    } else if (err.field && FIELD_ERRORS[err.field]) {
      setFieldError(FIELD_INPUTS[err.field], FIELD_ERRORS[err.field], err.message);
      $(FIELD_INPUTS[err.field]).focus();
    } else {
      showError("create-error", `${err.message} (${err.code})`);
      $("create-error").scrollIntoView({ block: "nearest" }); // the body scrolls; the buttons stay put
    }
  } finally {
    state.creating = false;
    submit.disabled = false;
    submit.textContent = state.editing ? "Save" : "Create";
  }
}

// PATCH only what changed, with If-Match: the version the form was loaded from.
async function saveEdit(editing, form) {
  const key = editing.key;
  const body = {};
  if (form.name !== key.name) body.name = form.name;
  if ([...form.scopes].sort().join(" ") !== [...key.scopes].sort().join(" ")) body.scopes = form.scopes;
  if (form.expires_in) body.expires_in = form.expires_in;
  if (Object.keys(body).length === 0) {
    showError("create-error", "Nothing changed: there is nothing to save.");
    return;
  }
  const updated = await api("PATCH", keyPath(key.id), body, undefined, { "If-Match": `"${editing.version}"` });
  state.editing = null;
  $("create-dialog").close();
  replaceKey(updated);
  showDetailNotice(`Saved. ${Object.keys(body).map((f) => ({ name: "Name", scopes: "Permissions", expires_in: "Expiry" })[f]).join(", ")} changed.`);
  loadKeyActivity(false);
}

// Someone else saved the key since the form loaded it: say so, and show the current record.
async function reloadAfterConflict(editing) {
  let current;
  try {
    current = await api("GET", keyPath(editing.key.id));
  } catch (err) {
    showError("create-error", `Someone else changed this key, and it could not be reloaded: ${err.message} (${err.code})`);
    return;
  }
  replaceKey(current);
  resetKeyForm(current);
  renderPermissions();
  showError("create-error", "Someone else changed this key while you were editing it. The form now shows " +
    "its current values: make your changes again and save.");
  $("create-error").scrollIntoView({ block: "nearest" });
}

// ---------- reveal once ----------

function reveal(created, title, opener = $("create-open")) {
  const input = $("reveal-key");
  input.value = created.key;
  state.revealClosing = false;
  $("reveal-confirm").hidden = true;
  $("copy-status").textContent = "";
  $("reveal-title").textContent = title;
  openDialog($("reveal-dialog"), opener);
  input.focus();
  input.select();
}

async function copyKey() {
  const input = $("reveal-key");
  try {
    await navigator.clipboard.writeText(input.value);
    $("copy-status").textContent = "Copied to the clipboard.";
  } catch (err) {
    input.select();
    const ok = document.execCommand && document.execCommand("copy");
    $("copy-status").textContent = ok ? "Copied to the clipboard." : "Copy it by hand: the key is selected.";
  }
}

// Escape (or any other close request) does not throw the secret away: the admin is told it
// will not be shown again and closes the dialog with "I have copied it".
function refuseRevealClose(event) {
  event.preventDefault();
  $("reveal-confirm").hidden = false;
}

function closeReveal() {
  state.revealClosing = true;
  $("reveal-dialog").close();
}

$("reveal-dialog").addEventListener("keydown", (event) => {
  if (event.key === "Escape") refuseRevealClose(event);
});
$("reveal-dialog").addEventListener("cancel", refuseRevealClose);
$("reveal-dialog").addEventListener("close", () => {
  if (!state.revealClosing) {
    // Closed by the browser without asking us (a repeated close request may not be refusable):
    // show the key again rather than lose it.
    $("reveal-dialog").showModal();
    $("reveal-confirm").hidden = false;
    return;
  }
  // The secret leaves the page here: nothing keeps it after the dialog closes.
  $("reveal-key").value = "";
  $("reveal-confirm").hidden = true;
  $("reveal-title").textContent = "Your new API key";
  $("copy-status").textContent = "";
  if (!state.detail) loadKeys(); // a roll's reveal: the detail view already shows the new record
});

// ---------- revoke ----------

function openRevoke(key, button) {
  state.revoking = key;
  $("revoke-name").textContent = key.name;
  $("revoke-prefix").textContent = key.prefix + "…";
  showError("revoke-error", "");
  openDialog($("revoke-dialog"), button);
  $("revoke-dialog").querySelector("[data-close]").focus();
}

async function confirmRevoke() {
  const key = state.revoking;
  if (!key) return;
  const button = $("revoke-confirm");
  button.disabled = true;
  try {
    const revoked = await api("POST", keyPath(key.id, "/revoke"));
    replaceKey(revoked);
    state.revoking = null;
    $("revoke-dialog").close();
    const message = `“${revoked.name}” was revoked and stops working immediately.` +
      (STATUS_FILTERS[state.view.status].revoked ? "" : " Revoked keys are hidden from the list unless the status filter shows them.");
    showNotice(message);
    if (state.detail) {
      showDetailNotice(message);
      loadKeyActivity(false);
    } else {
      $("notice").tabIndex = -1;
      $("notice").focus();
    }
  } catch (err) {
    if (err.status === 401) handleApiError(err, "revoke-error");
    else showError("revoke-error", `${err.message} (${err.code})`);
  } finally {
    button.disabled = false;
  }
}

// ---------- the detail view: fields, live secrets, usage chart, the key's activity ----------

function openDetail(key, opener) {
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

function showDetailNotice(message) {
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
    ...field("Created", timeCell(key.created_at), ` by ${actorLabel(key.created_by)}`),
    ...field("Last used", key.last_used_at ? timeCell(key.last_used_at) : never("Never")),
    ...field("Requests", text("span", requests(key.request_count), "request-count")),
    ...field("Expires", key.expires_at ? timeCell(key.expires_at) : never("Never")),
    ...(key.revoked_at ? field("Revoked", timeCell(key.revoked_at), ` by ${actorLabel(key.revoked_by || "")}`) : []),
    ...(key.rolled_at ? field("Rolled", timeCell(key.rolled_at)) : []),
  );
  renderSecrets(key);
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
      li.append(text("strong", ` · previous secret expires ${relative(secret.expires_at, now())}`, "grace"));
    }
    return li;
  });
  $("detail-secrets").replaceChildren(...items);
}

const RANGES = { "24h": [86400e3, "hour"], "7d": [7 * 86400e3, "day"], "30d": [30 * 86400e3, "day"], "90d": [90 * 86400e3, "day"] };

async function loadUsage() {
  const key = state.detail;
  if (!key) return;
  const range = document.querySelector("input[name='usage-range']:checked").value;
  const [length, granularity] = RANGES[range];
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
    $("usage-summary").textContent = `${requests(n)} in the last ${span(length)}, per ${granularity} (UTC).`;
  } catch (err) {
    $("usage-summary").textContent = "";
    $("usage-chart").replaceChildren();
    $("usage-table").replaceChildren();
    document.querySelector(".usage-details").hidden = true;
    if (err.status === 401) handleApiError(err, "usage-error");
    else showError("usage-error", `The request history cannot be shown: ${err.message} (${err.code})`);
  }
}

async function loadKeyActivity(more) {
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

// ---------- roll ----------

const GRACE_TEXT = {
  now: (p) => `The old secret ${p}… is refused by every gateway as soon as the roll is done. Anything still using it fails with 401 rolled_api_key.`,
  "1h": (p) => `The old secret ${p}… keeps working for 1 hour, then is refused (401 rolled_api_key). Put the new one in place within that hour.`,
  "24h": (p) => `The old secret ${p}… keeps working for 24 hours, then is refused (401 rolled_api_key). Put the new one in place within that time.`,
  "7d": (p) => `The old secret ${p}… keeps working for 7 days, then is refused (401 rolled_api_key). Put the new one in place within that time.`,
};

function explainGrace() {
  const grace = $("roll-form").elements.grace.value;
  $("roll-explain").textContent = GRACE_TEXT[grace](state.detail.prefix) + " The new secret is shown once.";
}

function openRoll(event) {
  const key = state.detail;
  $("roll-form").reset();
  $("roll-name").textContent = key.name;
  $("roll-prefix").textContent = key.prefix + "…";
  showError("roll-error", "");
  explainGrace();
  openDialog($("roll-dialog"), event.currentTarget);
  $("roll-form").querySelector("input[value='24h']").focus();
}

async function submitRoll(event) {
  event.preventDefault();
  if (state.rolling) return;
  const key = state.detail;
  state.rolling = true;
  $("roll-submit").disabled = true;
  showError("roll-error", "");
  try {
    const rolled = await api("POST", keyPath(key.id, "/roll"), { grace_period: $("roll-form").elements.grace.value });
    const secret = rolled.key;
    delete rolled.key; // the record kept for the page holds no secret
    $("roll-dialog").close();
    replaceKey(rolled);
    showDetailNotice(rolled.previous_secret_expires_at && Date.parse(rolled.previous_secret_expires_at) > now()
      ? `Rolled. The previous secret expires ${relative(rolled.previous_secret_expires_at, now())}.` : "Rolled. The previous secret is refused from now on.");
    loadKeyActivity(false);
    reveal({ key: secret }, `New secret for “${rolled.name}”`, $("detail-roll"));
  } catch (err) {
    if (err.status === 401) handleApiError(err, "roll-error");
    else showError("roll-error", `${err.message} (${err.code})`);
  } finally {
    state.rolling = false;
    $("roll-submit").disabled = false;
  }
}

// ---------- the org's activity ----------

function selectTab(name) {
  for (const tab of ["keys", "activity"]) {
    const on = tab === name;
    $("tab-" + tab).setAttribute("aria-selected", String(on));
    $("tab-" + tab).tabIndex = on ? 0 : -1;
    $(tab + "-panel").hidden = !on;
  }
  if (name === "activity") loadActivity(false);
}

async function loadActivity(more) {
  const params = new URLSearchParams({ limit: "50" });
  if (more && state.activityCursor) params.set("cursor", state.activityCursor);
  showError("activity-error", "");
  const names = new Map(state.keys.map((k) => [k.id, k.name]));
  try {
    const page = await api("GET", activityPath(params));
    const rows = page.data.map((e) => activityRow(e, (id) => names.get(id) || null, timeCell));
    if (more) $("activity-body").append(...rows);
    else $("activity-body").replaceChildren(...rows);
    state.activityCursor = page.next_cursor;
    $("activity-more").hidden = !page.next_cursor;
    $("activity-empty").hidden = $("activity-body").childElementCount !== 0;
    $("activity-table").hidden = $("activity-body").childElementCount === 0;
  } catch (err) {
    if (err.status === 404 && err.code === "org_not_found" && !more) {
      $("activity-body").replaceChildren();
      $("activity-empty").hidden = false;
      $("activity-table").hidden = true;
      return;
    }
    if (err.status === 401) handleApiError(err, "activity-error");
    else showError("activity-error", `${err.message} (${err.code})`);
  }
}

// ---------- wiring ----------

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => signOut(""));
$("create-open").addEventListener("click", openCreate);
$("empty-create").addEventListener("click", openCreate);
$("create-form").addEventListener("submit", submitCreate);
$("perm-search").addEventListener("input", renderPermissions);
$("perm-search").addEventListener("keydown", (event) => {
  if (event.key === "Enter") event.preventDefault(); // Enter in the search box does not submit
});
$("copy-key").addEventListener("click", copyKey);
$("reveal-done").addEventListener("click", closeReveal);
$("list-retry").addEventListener("click", retryList);
$("revoke-confirm").addEventListener("click", confirmRevoke);
$("status-filter").addEventListener("change", () => {
  const before = STATUS_FILTERS[state.view.status].revoked;
  state.view.status = $("status-filter").value;
  showNotice("");
  if (STATUS_FILTERS[state.view.status].revoked !== before) loadKeys(); // the API must be asked again
  else renderRows();
});
$("key-search").addEventListener("input", () => {
  state.view.query = $("key-search").value;
  renderRows();
});
for (const th of document.querySelectorAll("#keys-table th[data-sort]")) {
  th.querySelector("button").addEventListener("click", () => {
    const same = state.view.sort === th.dataset.sort;
    state.view.sort = th.dataset.sort;
    // A new column starts in its natural order: names A-Z, times newest (expiry: soonest) first.
    const natural = th.dataset.sort === "name" || th.dataset.sort === "expires" ? "ascending" : "descending";
    state.view.dir = same ? (state.view.dir === "ascending" ? "descending" : "ascending") : natural;
    renderRows();
    document.querySelector(`#keys-table th[data-sort="${th.dataset.sort}"] button`).focus();
  });
}
$("load-all").addEventListener("click", () => {
  if (!state.loading) loadKeys(true, true);
});
$("detail-edit").addEventListener("click", openEdit);
$("detail-roll").addEventListener("click", openRoll);
$("detail-revoke").addEventListener("click", (event) => openRevoke(state.detail, event.currentTarget));
$("roll-form").addEventListener("submit", submitRoll);
$("roll-form").addEventListener("change", explainGrace);
for (const radio of document.querySelectorAll("input[name='usage-range']")) radio.addEventListener("change", loadUsage);
$("key-activity-more").addEventListener("click", () => loadKeyActivity(true));
$("activity-more").addEventListener("click", () => loadActivity(true));
$("tab-keys").addEventListener("click", () => selectTab("keys"));
$("tab-activity").addEventListener("click", () => selectTab("activity"));
$("tab-keys").parentElement.addEventListener("keydown", (event) => {
  if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
  const next = document.activeElement.id === "tab-keys" ? "activity" : "keys";
  selectTab(next);
  $("tab-" + next).focus();
});
$("load-more").addEventListener("click", () => {
  if (!state.loading) loadKeys(true);
});
new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting) && !state.loading && state.cursor) loadKeys(true);
}).observe($("load-more"));

async function start() {
  const saved = sessionStorage.getItem(SESSION_KEY);
  if (saved) {
    try {
      state.session = JSON.parse(saved);
      const me = await api("GET", "/v1/me");
      if (canRead(me)) enterKeysView(me);
      else signOut(NO_ACCESS);
      return;
    } catch (err) {
      signOut(err instanceof ApiError ? `Please sign in again: ${err.message} (${err.code})` : "");
      return;
    }
  }
  signOut("");
}

start();
