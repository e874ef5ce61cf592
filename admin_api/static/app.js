// Settings -> API Keys. Plain JavaScript modules, no build step, no third-party code.
// SECURITY: every user-supplied string goes into the page through textContent or a form value,
// never through innerHTML; a pasted credential lives in sessionStorage only, and a session with the
// provider's account in an HttpOnly cookie (signin.js) that no script reads; the secret of a new key
// lives only in the reveal dialog's text box and is wiped when that dialog closes (which the admin
// must confirm).
//
// This module is the entry: sign-in (with an account: signin.js), the list, the org's Activity view and the wiring. The
// detail view (detail.js), the key form for create and edit (keyform.js), the roll, revoke and
// reveal dialogs (roll.js, revoke.js, reveal.js) each hold their own code; ui.js what they share.

import { leakNote } from "./leak.js";
import { activityRow, actorNode } from "./activity.js";
import { openDetail } from "./detail.js";
import { requests } from "./format.js";
import { openCreate } from "./keyform.js";
import { STATUS_FILTERS, visibleKeys } from "./listview.js";
import { canRead, MANAGE, READ } from "./permissions.js";
import { REVEAL_CLOSED } from "./reveal.js";
import { openRevoke } from "./revoke.js";
import "./roll.js";
import { activityPath, api, ApiError, hooks, orgPath, state } from "./session.js";
import { loadWebhooks } from "./webhooks.js";
import {
  cookieSession, currentSession, endSession, hideIdpDown, isCookieSession, offerAccountSignIn, SESSION_ENDED,
  showIdpDown, showNoAccess, showPerson, SIGNED_OUT_TEXT, stopWatching, watchIdle,
} from "./signin.js";
import {
  $, canRevoke, copyIdButton, flagList, handleApiError, KEY_CHANGED, scopeLabel, setFieldError, showError, showNotice,
  SIGNED_OUT, STATUS_LABEL, text, timeCell,
} from "./ui.js";

const SESSION_KEY = "api-keys-session";
const PAGE_SIZE = 25;
const ORG_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

// ---------- sign in / out ----------

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

// Back to the sign-in view. ``message`` goes under the token field (a pasted credential that
// stopped working), ``notice`` above the choices (a session with the account that ended).
function signOut(message, notice = "") {
  sessionStorage.removeItem(SESSION_KEY);
  stopWatching();
  resetPage();
  $("sign-in-view").hidden = false;
  $("sign-in-message").textContent = notice;
  $("sign-in-message").hidden = !notice;
  setFieldError("credential", "credential-error", message || "");
  if (message) $("token-sign-in").open = true;
  if (!$("account-sign-in").hidden && !message) $("account-sign-in-link").focus();
  else $("credential").focus();
}

function resetPage() {
  state.session = null;
  state.me = null;
  state.keys = [];
  state.generation += 1;
  state.revealClosing = true; // signing out wipes a secret still on screen
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  $("keys-body").replaceChildren();
  $("keys-view").hidden = true;
  $("no-access-view").hidden = true;
  $("who").hidden = true;
  $("who").removeAttribute("title");
  $("sign-out").hidden = true;
}

// The top bar's Sign out. With the account: the API ends the session, then the provider's own
// logout when it has one (it comes back to this page).
async function signOutClicked() {
  if (!isCookieSession()) {
    signOut("");
    return;
  }
  $("sign-out").disabled = true;
  try {
    const provider = await endSession();
    if (provider) {
      resetPage();
      location.assign(provider);
      return;
    }
    signOut("", SIGNED_OUT_TEXT);
  } catch (err) {
    // Not signed out: the session goes on, so the page stays and says so.
    const message = `Signing out failed, you are still signed in: ${err.message} (${err.code}). Try again.`;
    if ($("keys-view").hidden) signOut("", message);
    else showListError(err, null, message);
  } finally {
    $("sign-out").disabled = false;
  }
}

// A call with the account's session said: it ended, no role, or the provider is down.
hooks.failed = (err) => {
  if (err.status === 401) signOut("", SESSION_ENDED);
  else if (err.code === "no_org_role") noAccess(state.session && state.session.person);
  else showIdpDown(() => start());
};
hooks.used = () => watchIdle(() => signOut("", SESSION_ENDED));

function noAccess(person) {
  stopWatching();
  resetPage();
  $("sign-in-view").hidden = true;
  showNoAccess(person);
}

function enterKeysView(me) {
  // Signed in with the account: the role is the session's; an admin may grant any permission.
  state.me = me;
  $("sign-in-view").hidden = true;
  $("no-access-view").hidden = true;
  $("keys-view").hidden = false;
  if (isCookieSession()) showPerson(state.session.person);
  else {
    $("who").textContent = me.operator ? `Operator · organization ${state.session.orgId}` : `Organization ${state.session.orgId} · key ${me.actor.slice(4)}`;
  }
  $("who").hidden = false;
  $("sign-out").hidden = false;
  selectTab("keys");
  $("create-open").hidden = !me.can_manage;
  $("empty-create").hidden = !me.can_manage;
  if (me.can_manage) showNotice("");
  else if (isCookieSession()) {
    showNotice(`Your role (${state.session.person.role}) lets you see this organization's keys, their requests and ` +
      "activity, but not create, edit, roll or revoke them; ask an admin of your organization for the admin role.");
  } else {
    showNotice("This key can view the list but not create or revoke keys (that needs the api_keys:manage permission).");
  }
  watchIdle(() => signOut("", SESSION_ENDED));
  loadPermissions().finally(() => loadKeys());
}

async function loadPermissions() {
  try {
    state.permissions = (await api("GET", "/v1/permissions")).data;
  } catch (err) {
    state.permissions = []; // the list still works, showing scopes instead of labels
  }
}

// No answer, or a server-side fault (503 while the store is down): worth another try.
function retryable(err) {
  return err.status === 0 || err.status === 429 || err.status >= 500;
}

function showListError(err, retry, message = `${err.message} (${err.code})`) {
  if (err.status === 401 || err.handled) { // handled: the session's own screens (signin.js) say it
    handleApiError(err, "list-error");
    return;
  }
  state.retry = retryable(err) ? retry : null;
  $("list-error-text").textContent = message;
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
  const by = actorNode(key.created_by, "span", "sub created-by");
  by.prepend("by ");
  created.append(timeCell(key.created_at), by);

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
  const leak = leakNote(key);
  if (leak) status.append(leak);

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

// ---------- the org's activity ----------

const TABS = ["keys", "activity", "webhooks"];

function selectTab(name) {
  for (const tab of TABS) {
    const on = tab === name;
    $("tab-" + tab).setAttribute("aria-selected", String(on));
    $("tab-" + tab).tabIndex = on ? 0 : -1;
    $(tab + "-panel").hidden = !on;
  }
  if (name === "activity") loadActivity(false);
  if (name === "webhooks") loadWebhooks();
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
$("sign-out").addEventListener("click", signOutClicked);
$("no-access-sign-out").addEventListener("click", signOutClicked);
document.addEventListener(SIGNED_OUT, (event) => signOut(event.detail));
document.addEventListener(KEY_CHANGED, (event) => {
  const row = $("keys-body").querySelector(`tr[data-key-id="${CSS.escape(event.detail.id)}"]`);
  if (row) row.replaceWith(keyRow(event.detail));
});
document.addEventListener(REVEAL_CLOSED, () => {
  if (!state.detail) loadKeys(); // a roll's reveal: the detail view already shows the new record
});
$("create-open").addEventListener("click", openCreate);
$("empty-create").addEventListener("click", openCreate);
$("list-retry").addEventListener("click", retryList);
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
$("activity-more").addEventListener("click", () => loadActivity(true));
$("tab-keys").addEventListener("click", () => selectTab("keys"));
$("tab-activity").addEventListener("click", () => selectTab("activity"));
$("tab-webhooks").addEventListener("click", () => selectTab("webhooks"));
$("tab-keys").parentElement.addEventListener("keydown", (event) => {
  if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
  const at = TABS.indexOf(document.activeElement.id.replace("tab-", ""));
  const next = TABS[(at + (event.key === "ArrowRight" ? 1 : TABS.length - 1)) % TABS.length];
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
  // Back from the provider's logout with ?state=: the page reads no query, the address bar need not show it.
  if (location.search) history.replaceState(null, "", location.pathname);
  hideIdpDown();
  const offered = await offerAccountSignIn();
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
  if (offered) {
    let session = null;
    try {
      session = await currentSession();
    } catch (err) {
      if (err.code === "no_org_role") noAccess(null);
      else {
        signOut("", err.code === "idp_unavailable" ? "" : `Your session cannot be checked: ${err.message} (${err.code})`);
        if (err.code === "idp_unavailable") showIdpDown(() => start());
      }
      return;
    }
    if (session) {
      state.session = cookieSession(session);
      try {
        enterKeysView(await api("GET", "/v1/me"));
      } catch (err) {
        if (!err.handled) signOut("", `Please sign in again: ${err.message} (${err.code})`);
      }
      return;
    }
  }
  signOut("");
}

start();
