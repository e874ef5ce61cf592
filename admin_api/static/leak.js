// A key a secret scanner reported public (key.leak: url, source, scanner, action, found_at): its
// "Revoked: leaked (found at <url>)" line, or its "Leaked" badge while it is active (flagged, or
// its revoke pending).
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

// What the page says of a reported key, from the record's state (pure): the key's status decides,
// not the action the mark asked for. A revoked key reads "Revoked: leaked" (a flagged key revoked
// later too); a key whose revoke was asked but has not happened yet (the mark is written first; a
// Redis fault, GitHub sends the report again) reads "Leaked: revoke pending"; a flagged one "Leaked".
export function leakState(key) {
  if (!key.leak) return null;
  if (key.status === "revoked") return { kind: "revoked", text: "Revoked: leaked" };
  if (key.leak.action === "revoke") {
    return { kind: "pending", text: "Leaked: revoke pending",
             title: `Reported public by ${key.leak.scanner}; its revocation has not completed yet` };
  }
  return { kind: "flagged", text: "Leaked",
           title: `Reported public by ${key.leak.scanner}; left active (the org's leak action is flag)` };
}

// The status cell's addition: null unless the key was reported.
export function leakNote(key) {
  const state = leakState(key);
  if (!state) return null;
  const note = document.createElement("span");
  note.className = "sub leak";
  note.dataset.leak = state.kind;
  if (state.kind === "revoked") {
    note.append(`${state.text} (found at `, where(key.leak), ")");
  } else {
    const badge = document.createElement("span");
    badge.className = "badge leaked";
    badge.textContent = state.text;
    badge.title = state.title;
    note.append(badge, " found at ", where(key.leak));
  }
  return note;
}
