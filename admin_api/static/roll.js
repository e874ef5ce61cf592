// The roll dialog, opened from the detail view: a grace period for the old secret, then the new
// secret in the reveal dialog (shown once, like a new key's).

import { graceLeft } from "./format.js";
import { showDetailNotice } from "./detail.js";
import { reveal } from "./reveal.js";
import { api, keyPath, state } from "./session.js";
import { $, handleApiError, now, openDialog, replaceKey, showError } from "./ui.js";

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
      ? `Rolled. The previous secret expires in ${graceLeft(rolled.previous_secret_expires_at, now())}.` : "Rolled. The previous secret is refused from now on.");
    reveal({ key: secret }, `New secret for “${rolled.name}”`, $("detail-roll"));
  } catch (err) {
    if (err.status === 401) handleApiError(err, "roll-error");
    else showError("roll-error", `${err.message} (${err.code})`);
  } finally {
    state.rolling = false;
    $("roll-submit").disabled = false;
  }
}

$("detail-roll").addEventListener("click", openRoll);
$("roll-form").addEventListener("submit", submitRoll);
$("roll-form").addEventListener("change", explainGrace);
