// Pure rules of the key list (no DOM, no fetch): which loaded keys a filter and a search show, and
// in which order. They work on the keys loaded so far; the page says so while more pages remain.

// Status filter -> whether the API must be asked for revoked keys too, and which statuses it shows.
export const STATUS_FILTERS = {
  current: { revoked: false, statuses: ["active", "expired"] },
  active: { revoked: false, statuses: ["active"] },
  expired: { revoked: false, statuses: ["expired"] },
  revoked: { revoked: true, statuses: ["revoked"] },
  all: { revoked: true, statuses: ["active", "expired", "revoked"] },
};

// Sort columns -> the value compared. A key never used sorts as the oldest use; one that never
// expires as the latest expiry.
const SORT_VALUES = {
  name: (k) => k.name.toLocaleLowerCase("en-US"),
  created: (k) => Date.parse(k.created_at),
  last_used: (k) => (k.last_used_at ? Date.parse(k.last_used_at) : -Infinity),
  expires: (k) => (k.expires_at ? Date.parse(k.expires_at) : Infinity),
};
export const SORT_COLUMNS = Object.keys(SORT_VALUES);

export function matches(key, query) {
  const q = query.trim().toLowerCase();
  if (!q) return true;
  return key.name.toLowerCase().includes(q) || key.prefix.toLowerCase().startsWith(q) || key.id.toLowerCase() === q;
}

// The keys to show: {status, query, sort: column, dir: "ascending"|"descending"}.
export function visibleKeys(keys, view) {
  const statuses = STATUS_FILTERS[view.status].statuses;
  const shown = keys.filter((k) => statuses.includes(k.status) && matches(k, view.query));
  const value = SORT_VALUES[view.sort];
  const sign = view.dir === "ascending" ? 1 : -1;
  // Stable: equal values keep the API's order (newest first).
  return shown
    .map((key, i) => ({ key, i, v: value(key) }))
    .sort((a, b) => (a.v < b.v ? -sign : a.v > b.v ? sign : a.i - b.i))
    .map((x) => x.key);
}
