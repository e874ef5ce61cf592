// The page's state and its one way to call the admin API (no DOM here but fetch).

export const state = {
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

export class ApiError extends Error {
  constructor(status, error) {
    super(error && error.message ? error.message : `The server answered ${status}.`);
    this.status = status;
    this.code = error && error.code ? error.code : "http_" + status;
    this.field = error && error.field ? error.field : null;
  }
}

export async function api(method, path, body, credential = state.session && state.session.credential, extra = {}) {
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

export function keyPath(id, suffix = "") {
  return orgPath(`/${encodeURIComponent(id)}${suffix}`);
}

export function activityPath(params) {
  return `/v1/orgs/${encodeURIComponent(state.session.orgId)}/audit-events?${params}`;
}

export function orgPath(suffix = "") {
  return `/v1/orgs/${encodeURIComponent(state.session.orgId)}/api-keys${suffix}`;
}
