// Pure rules of the page about permissions (no DOM, no fetch): what the signed-in caller holds
// and may grant, and how a resource group is named. The API decides; these only mirror it.

export const READ = "api_keys:read";
export const MANAGE = "api_keys:manage";

// Upper-case words in group names (their plural keeps a lower-case "s").
const ACRONYMS = new Map([
  ["api", "API"], ["apis", "APIs"], ["id", "ID"], ["ids", "IDs"], ["url", "URL"], ["urls", "URLs"],
  ["http", "HTTP"], ["ip", "IP"], ["sms", "SMS"], ["sso", "SSO"],
]);

// ``me`` is GET /v1/me. As in admin_api/auth.py, api_keys:manage implies api_keys:read.
export function holds(me, scope) {
  if (me.operator) return true;
  return me.scopes.includes(scope) || (scope === READ && me.scopes.includes(MANAGE));
}

// Whether the caller may see the page at all (list and permissions need api_keys:read).
export function canRead(me) {
  return holds(me, READ);
}

// A caller may grant only what it holds itself; an operator, or a person with the admin role of the
// org (``grants_any``), any permission of the catalogue.
export function grantable(me, scope) {
  return Boolean(me.grants_any) || holds(me, scope);
}

// "api_keys" -> "API keys", "webhook_urls" -> "Webhook URLs", "tasks" -> "Tasks": sentence
// case, with known acronyms upper case.
export function groupLabel(resource) {
  const words = resource.split(/[_\s-]+/).filter(Boolean).map((word) => {
    const lower = word.toLowerCase();
    return ACRONYMS.get(lower) || lower;
  });
  if (words.length === 0) return resource;
  const [first, ...rest] = words;
  return [first.charAt(0).toUpperCase() + first.slice(1), ...rest].join(" ");
}
