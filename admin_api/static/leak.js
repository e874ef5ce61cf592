// A key a secret scanner reported public (key.leak: url, source, scanner, action, found_at): its
// "Revoked: leaked (found at <url>)" line, or its "Leaked" badge while it is flagged and active.
// SECURITY: the URL comes from the report; it becomes a link only when it is http(s).

export function safeUrl(url) {
  try {
    const parsed = new URL(url);
    return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : null;
  } catch {
    return null;
  }
}

function where(leak) {
  const href = safeUrl(leak.url);
  if (!href) {
    const span = document.createElement("span");
    span.className = "leak-url";
    span.textContent = leak.url || "an unnamed place";
    return span;
  }
  const a = document.createElement("a");
  a.className = "leak-url";
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  a.textContent = leak.url;
  return a;
}

// The status cell's addition: null unless the key was reported.
export function leakNote(key) {
  if (!key.leak) return null;
  const note = document.createElement("span");
  note.className = "sub leak";
  if (key.status === "revoked" && key.leak.action === "revoke") {
    note.append("Revoked: leaked (found at ", where(key.leak), ")");
  } else {
    const badge = document.createElement("span");
    badge.className = "badge leaked";
    badge.textContent = "Leaked";
    badge.title = `Reported public by ${key.leak.scanner}; left active (the org's leak action is flag)`;
    note.append(badge, " found at ", where(key.leak));
  }
  return note;
}
