// The key form: it creates a key (then the reveal dialog shows its secret) or edits one from the
// detail view (PATCH with If-Match: the version the form was loaded from; a 412 reloads the key).

import { showDetailNotice } from "./detail.js";
import { utcText } from "./format.js";
import { focusLimits, readLimits, sameLimits, setLimitRows, setLimitsError } from "./limits.js";
import { grantable, groupLabel } from "./permissions.js";
import { reveal } from "./reveal.js";
import { api, keyPath, orgPath, state } from "./session.js";
import { $, handleApiError, openDialog, replaceKey, scopeLabel, setFieldError, showError, text } from "./ui.js";

const FIELD_INPUTS = { name: "key-name", expires_in: "key-expiry", scopes: "perm-search" };
const FIELD_ERRORS = { name: "key-name-error", expires_in: "key-expiry-error", scopes: "perm-error" };

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
  setLimitRows(key ? key.limits : null);
  for (const field of Object.keys(FIELD_ERRORS)) setFieldError(FIELD_INPUTS[field], FIELD_ERRORS[field], "");
  showError("create-error", "");
}

export async function openCreate(event) {
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
  const limits = readLimits();
  let invalid = null;
  if (!name) {
    setFieldError("key-name", "key-name-error", "Enter a name, for example “Zapier production”.");
    invalid = invalid || $("key-name");
  }
  if (state.selected.size === 0) {
    setFieldError("perm-search", "perm-error", "Select at least one permission.");
    invalid = invalid || $("perm-search");
  }
  invalid = invalid || limits.invalid;
  if (invalid) {
    invalid.focus();
    return;
  }
  const body = { name, expires_in: $("key-expiry").value, scopes: state.permissions.map((p) => p.scope).filter((s) => state.selected.has(s)) };
  const editing = state.editing;
  if (limits.limits || editing) body.limits = limits.limits; // create: none given is the default
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
    } else if (err.field === "limits") {
      setLimitsError(err.message);
      focusLimits();
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
  if (!sameLimits(form.limits, key.limits || null)) body.limits = form.limits;
  if (Object.keys(body).length === 0) {
    showError("create-error", "Nothing changed: there is nothing to save.");
    return;
  }
  const updated = await api("PATCH", keyPath(key.id), body, undefined, { "If-Match": `"${editing.version}"` });
  state.editing = null;
  $("create-dialog").close();
  replaceKey(updated);
  showDetailNotice(`Saved. ${Object.keys(body).map((f) => ({ name: "Name", scopes: "Permissions", expires_in: "Expiry", limits: "Limits" })[f]).join(", ")} changed.`);
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

$("create-form").addEventListener("submit", submitCreate);
$("perm-search").addEventListener("input", renderPermissions);
$("perm-search").addEventListener("keydown", (event) => {
  if (event.key === "Enter") event.preventDefault(); // Enter in the search box does not submit
});
$("detail-edit").addEventListener("click", openEdit);
