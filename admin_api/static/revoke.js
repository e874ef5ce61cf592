// The revoke dialog, from a list row or the detail view.

import { showDetailNotice } from "./detail.js";
import { STATUS_FILTERS } from "./listview.js";
import { api, keyPath, state } from "./session.js";
import { $, handleApiError, openDialog, replaceKey, showError, showNotice } from "./ui.js";

export function openRevoke(key, button) {
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

$("revoke-confirm").addEventListener("click", confirmRevoke);
$("detail-revoke").addEventListener("click", (event) => openRevoke(state.detail, event.currentTarget));
