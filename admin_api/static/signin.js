// Signing in with one's own account (OpenID Connect; the admin API is the client and keeps the
// session in an HttpOnly cookie the page never sees): the offer on the sign-in view, the session at
// load, the screens for a person without a role and for a provider that cannot be reached, the
// idle timer and signing out. The pasted-token sign-in stays in app.js.
// SECURITY: nothing of the session goes to storage; its CSRF token lives in ``state.session`` only.

import { authCall, state } from "./session.js";
import { $ } from "./ui.js";

export const SESSION_ENDED = "Your session has ended. Sign in again.";
export const SIGNED_OUT_TEXT = "You are signed out.";

// GET /auth/config: whether to offer the account. An API without it, or none: the token form only.
export async function offerAccountSignIn() {
  let on = false;
  try {
    on = Boolean((await authCall("GET", "/auth/config")).sign_in);
  } catch (err) {
    on = false;
  }
  $("account-sign-in").hidden = !on;
  $("token-sign-in").open = !on; // folded below the account when that is offered
  return on;
}

// GET /auth/session: the person signed in, or null (401: no session, or it ended). Else it throws.
export async function currentSession() {
  try {
    return await authCall("GET", "/auth/session");
  } catch (err) {
    if (err.status === 401) return null;
    throw err;
  }
}

export function cookieSession(session) {
  return { cookie: true, orgId: session.org_id, csrf: session.csrf_token, person: session };
}

export function isCookieSession() {
  return Boolean(state.session && state.session.cookie);
}

// The top bar: "alice@a.example · admin · organization org-a", the subject on hover.
export function showPerson(person) {
  $("who").textContent = `${person.email || person.subject} · ${person.role} · organization ${person.org_id}`;
  $("who").title = `Subject ${person.subject}`;
}

// 403 no_org_role: signed in, but neither admin nor viewer of the org (the API deleted the session).
export function showNoAccess(person) {
  $("no-access-who").textContent = person ? person.email || person.subject : "your account";
  $("no-access-org").textContent = person ? person.org_id : "";
  $("no-access-org-line").hidden = !person;
  $("no-access-view").hidden = false;
  $("no-access-title").focus();
}

// 503 idp_unavailable: a banner over whatever the page shows; ``retry`` runs when asked.
let retryIdp = null;

export function showIdpDown(retry) {
  retryIdp = retry;
  $("idp-banner").hidden = false;
}

export function hideIdpDown() {
  retryIdp = null;
  $("idp-banner").hidden = true;
}

$("idp-retry").addEventListener("click", () => {
  const retry = retryIdp;
  hideIdpDown();
  if (retry) retry();
});

// The API forgets a session idle for ``idle_timeout`` s, and any at ``expires_at``: when that time
// has passed since the page's last call, ``ended()`` runs unless GET /auth/session still finds it
// (another tab kept it alive).
let idleTimer = null;

export function watchIdle(ended) {
  clearTimeout(idleTimer);
  if (!isCookieSession()) return;
  const person = state.session.person;
  const left = Math.min(person.idle_timeout * 1000, Date.parse(person.expires_at) - Date.now());
  idleTimer = setTimeout(async () => {
    if (!isCookieSession()) return;
    let still = null;
    try {
      still = await currentSession();
    } catch (err) {
      still = state.session.person; // not known now (the provider, the network): the next call will tell
    }
    if (!isCookieSession()) return;
    if (still) {
      state.session.person = still;
      watchIdle(ended);
    } else ended();
  }, Math.max(left, 0) + 1000);
}

export function stopWatching() {
  clearTimeout(idleTimer);
}

// POST /auth/logout: the API deletes the session and clears its cookie. The provider's logout
// address when it has one (the page goes there), else null.
export async function endSession() {
  const csrf = state.session && state.session.csrf;
  const answer = await authCall("POST", "/auth/logout", csrf);
  return (answer && answer.end_session_url) || null;
}
