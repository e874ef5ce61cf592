// Settings -> API Keys. Plain JavaScript, no build step, no third-party code.
// SECURITY: every user-supplied string goes into the page through textContent or a form value,
// never through innerHTML; the credential lives in sessionStorage only; the secret of a new key
// lives only in the reveal dialog's text box and is wiped when that dialog closes (which the admin
// must confirm).

import { canRead, grantable, groupLabel, MANAGE, READ } from "./permissions.js";

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
};

class ApiError extends Error {
  constructor(status, error) {
    super(error && error.message ? error.message : `The server answered ${status}.`);
    this.status = status;
    this.code = error && error.code ? error.code : "http_" + status;
    this.field = error && error.field ? error.field : null;
  }
}

async function api(method, path, body, credential = state.session && state.session.credential) {
  const headers = { Accept: "application/json", Authorization: "Bearer " + credential };
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

function orgPath(suffix = "") {
  return `/v1/orgs/${encodeURIComponent(state.session.orgId)}/api-keys${suffix}`;
}

// ---------- formatting ----------

const localFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function timeCell(iso) {
  const el = document.createElement("time");
  const date = new Date(iso);
  el.dateTime = iso;
  el.textContent = localFormat.format(date);
  el.title = date.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
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

async function loadKeys(more = false) {
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
  const params = new URLSearchParams({ limit: String(PAGE_SIZE), include_revoked: String($("show-revoked").checked) });
  if (more && state.cursor) params.set("cursor", state.cursor);
  try {
    const page = await api("GET", orgPath("?" + params));
    if (generation !== state.generation) return;
    state.keys.push(...page.data);
    state.cursor = page.next_cursor;
    for (const key of page.data) $("keys-body").append(keyRow(key));
  } catch (err) {
    if (generation !== state.generation) return;
    // An org exists from its first key on: for an operator, a new org is an empty list.
    if (err.status === 404 && err.code === "org_not_found" && !more) return;
    // The labels may have failed with the list (a network error at sign-in): fetch them again too.
    showListError(err, () => (state.permissions.length ? Promise.resolve() : loadPermissions()).then(() => loadKeys(more)));
  } finally {
    if (generation === state.generation) {
      state.loading = false;
      $("loading").hidden = true;
      renderListChrome();
    }
  }
}

function renderListChrome() {
  const count = state.keys.length;
  $("keys-table").hidden = count === 0;
  $("empty-state").hidden = count !== 0 || !$("list-error").hidden;
  if (count === 0 && $("show-revoked").checked === false) {
    $("empty-state").querySelector("h2").textContent = "No API keys yet";
  } else if (count === 0) {
    $("empty-state").querySelector("h2").textContent = "No API keys, revoked or otherwise";
  }
  $("load-more").hidden = !state.cursor;
  $("list-count").textContent = count === 0 ? "" : `${count} key${count === 1 ? "" : "s"}${state.cursor ? " shown, more below" : ""}`;
}

function scopeLabel(scope) {
  const known = state.permissions.find((p) => p.scope === scope);
  return known ? known.label : scope;
}

function keyRow(key) {
  const tr = document.createElement("tr");
  tr.dataset.keyId = key.id;
  tr.className = "is-" + key.status;

  const name = document.createElement("td");
  name.className = "name";
  name.dataset.label = "Name";
  const nameBox = document.createElement("div");
  const scopes = text("span", key.scopes.map(scopeLabel).join(", "), "scopes");
  scopes.title = key.scopes.join(" ");
  nameBox.append(text("span", key.name, "key-title"), scopes);
  name.append(nameBox);

  const prefix = document.createElement("td");
  prefix.dataset.label = "Key";
  prefix.append(text("code", key.prefix + "…", "prefix"));

  const created = document.createElement("td");
  created.dataset.label = "Created";
  created.append(timeCell(key.created_at));

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
  if (key.status === "active" && state.me && state.me.can_manage) {
    const button = text("button", "Revoke", "button small");
    button.type = "button";
    button.setAttribute("aria-label", `Revoke ${key.name}`);
    button.addEventListener("click", () => openRevoke(key, button));
    actions.append(button);
  }

  tr.append(name, prefix, created, lastUsed, expires, status, actions);
  return tr;
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

async function openCreate(event) {
  const form = $("create-form");
  form.reset();
  state.selected = new Set();
  for (const field of Object.keys(FIELD_ERRORS)) setFieldError(FIELD_INPUTS[field], FIELD_ERRORS[field], "");
  showError("create-error", "");
  $("perm-groups").replaceChildren(text("p", "Loading permissions…", "muted"));
  openDialog($("create-dialog"), event.currentTarget);
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
  state.creating = true;
  const submit = $("create-submit");
  submit.disabled = true;
  submit.textContent = "Creating…";
  try {
    const created = await api("POST", orgPath(), body);
    if ($("create-dialog").open) $("create-dialog").close();
    reveal(created);
  } catch (err) {
    if (err.status === 401) {
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
    submit.textContent = "Create";
  }
}

// ---------- reveal once ----------

function reveal(created) {
  const input = $("reveal-key");
  input.value = created.key;
  state.revealClosing = false;
  $("reveal-confirm").hidden = true;
  $("copy-status").textContent = "";
  $("reveal-title").textContent = `Your new API key “${created.name}”`;
  openDialog($("reveal-dialog"), $("create-open"));
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
  loadKeys();
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
    const revoked = await api("POST", orgPath(`/${encodeURIComponent(key.id)}/revoke`));
    const index = state.keys.findIndex((k) => k.id === key.id);
    if (index >= 0) state.keys[index] = revoked;
    const row = $("keys-body").querySelector(`tr[data-key-id="${CSS.escape(key.id)}"]`);
    const replacement = keyRow(revoked);
    if (row) row.replaceWith(replacement);
    state.revoking = null;
    $("revoke-dialog").close();
    showNotice(`“${revoked.name}” was revoked and stops working immediately.` +
      ($("show-revoked").checked ? "" : " Revoked keys are hidden from the list unless Show revoked is ticked."));
    $("notice").tabIndex = -1;
    $("notice").focus();
  } catch (err) {
    if (err.status === 401) handleApiError(err, "revoke-error");
    else showError("revoke-error", `${err.message} (${err.code})`);
  } finally {
    button.disabled = false;
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
$("show-revoked").addEventListener("change", () => {
  showNotice("");
  loadKeys();
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
