// Pure formatting rules of the page (no DOM, no fetch): relative times, exact UTC, the flags a key
// earns ("Expires in 5 days", "Not used for 30 days", "Previous secret expires in 23 h").

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

export const EXPIRING_WITHIN = 7 * DAY; // "Expires in 5 days" from a week before
export const IDLE_AFTER = 30 * DAY; // "Not used for 30 days"

// "2026-12-01 21:25:07 UTC"
export function utcText(iso) {
  return new Date(iso).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

// A length of time in the largest unit that fits, rounded: "45 s", "3 min", "23 h", "5 days", "2 months".
export function span(ms) {
  const abs = Math.abs(ms);
  if (abs < MINUTE) return `${Math.round(abs / 1000)} s`;
  if (abs < HOUR - MINUTE / 2) return `${Math.round(abs / MINUTE)} min`;
  if (abs < DAY - HOUR / 2) return `${Math.round(abs / HOUR)} h`;
  const days = Math.round(abs / DAY);
  if (days < 100) return `${days} day${days === 1 ? "" : "s"}`;
  if (days < 730) return `${Math.floor(days / 30)} months`;
  return `${Math.floor(days / 365)} years`;
}

// How long a previous secret has left: hours below two days ("24 h", then "23 h"), as the grace
// periods are counted (1 h, 24 h); else as span() says ("7 days").
export function graceLeft(iso, now) {
  const left = Date.parse(iso) - now;
  return left >= HOUR - MINUTE / 2 && left < 2 * DAY - HOUR / 2 ? `${Math.round(left / HOUR)} h` : span(left);
}

// "just now", "3 min ago", "in 5 days".
export function relative(iso, now) {
  const delta = Date.parse(iso) - now;
  if (Math.abs(delta) < 45_000) return "just now";
  return delta < 0 ? `${span(delta)} ago` : `in ${span(delta)}`;
}

// The flags that tell an admin what to do about a key: [{kind, text}].
export function keyFlags(key, now) {
  const flags = [];
  if (key.status !== "active") return flags;
  if (key.expires_at) {
    const left = Date.parse(key.expires_at) - now;
    if (left <= EXPIRING_WITHIN) flags.push({ kind: "expiring", text: `Expires in ${span(left)}` });
  }
  const used = Date.parse(key.last_used_at || key.created_at);
  if (now - used >= IDLE_AFTER) {
    const days = Math.floor((now - used) / DAY);
    flags.push({ kind: "idle", text: key.last_used_at ? `Not used for ${days} days` : `Never used in ${days} days` });
  }
  const previous = previousSecret(key, now);
  if (previous) flags.push({ kind: "rolled", text: `Previous secret expires in ${graceLeft(previous.expires_at, now)}` });
  return flags;
}

// The previous secret still live during a roll's grace period, or null.
export function previousSecret(key, now) {
  const secrets = key.secrets || [];
  const previous = secrets.slice(1).find((s) => s.expires_at && Date.parse(s.expires_at) > now);
  return previous || null;
}

// "1 request", "1,234 requests"
export function requests(n) {
  return `${n.toLocaleString("en-US")} request${n === 1 ? "" : "s"}`;
}

// "600 per minute, 100,000 per month"
export function limitsText(limits) {
  return limits.map((l) => `${l.limit.toLocaleString("en-US")} per ${l.window}`).join(", ");
}
