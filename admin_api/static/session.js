// The page's state and its one way to call the admin API (no DOM here but fetch).

export const state = {
  // {credential, orgId} with a pasted token; {cookie: true, orgId, csrf, person} when signed in with
  // the provider (the admin API holds the session: an HttpOnly cookie; the CSRF token is kept here,
  // in memory only, never in storage)
  session: null,
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

export class ApiError extends Error {
  constructor(status, error) {
    super(error && error.message ? error.message : `The server answered ${status}.`);
    this.status = status;
    this.code = error && error.code ? error.code : "http_" + status;
    this.field = error && error.field ? error.field : null;
  }
}

const UNSAFE = new Set(["POST", "PATCH", "PUT", "DELETE"]);

// Set by the entry module for a cookie session: ``used()`` after every call (the idle timer), and
// ``failed(err)`` when a call says the session ended (401), the person has no role (403
// no_org_role) or the provider cannot be reached (503 idp_unavailable). Such an error is marked
// ``handled``: the page changes view for it, the caller need not say more.
export const hooks = { used: null, failed: null };
const SESSION_ERRORS = new Set(["no_org_role", "idp_unavailable"]);

// With a ``credential`` (or the pasted one of the session): Authorization, never a cookie. Signed
// in with the provider: the session cookie, and X-CSRF-Token on every call that changes something.
export async function api(method, path, body, credential = state.session && state.session.credential, extra = {}) {
  const headers = { ...extra };
  const cookie = !credential && Boolean(state.session && state.session.cookie);
  if (credential) headers.Authorization = "Bearer " + credential;
  else if (cookie && UNSAFE.has(method)) headers["X-CSRF-Token"] = state.session.csrf;
  if (!cookie) return request(method, path, body, headers, false);
  try {
    return await request(method, path, body, headers, true);
  } catch (err) {
    if ((err.status === 401 || SESSION_ERRORS.has(err.code)) && hooks.failed) {
      err.handled = true;
      hooks.failed(err);
    }
    throw err;
  } finally {
    if (hooks.used) hooks.used();
  }
}

// The sign-in's own routes (/auth/*): the session cookie only; ``csrf`` for POST /auth/logout.
export function authCall(method, path, csrf) {
  return request(method, path, undefined, csrf ? { "X-CSRF-Token": csrf } : {}, true);
}

async function request(method, path, body, extra, cookie) {
  const headers = { Accept: "application/json", ...extra };
  const init = { method, headers, cache: "no-store", credentials: cookie ? "same-origin" : "omit" };
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

export function keyPath(id, suffix = "") {
  return orgPath(`/${encodeURIComponent(id)}${suffix}`);
}

export function activityPath(params) {
  return `/v1/orgs/${encodeURIComponent(state.session.orgId)}/audit-events?${params}`;
}

export function orgPath(suffix = "") {
  return `/v1/orgs/${encodeURIComponent(state.session.orgId)}/api-keys${suffix}`;
}

