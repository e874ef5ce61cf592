// The reveal dialog: a new secret (create, roll) is shown once. It lives only in the dialog's text
// box and is wiped when the dialog closes, which the admin must confirm ("I have copied it").

import { state } from "./session.js";
import { $, openDialog } from "./ui.js";

export const REVEAL_CLOSED = "api-keys:reveal-closed"; // the secret is gone from the page

export function reveal(created, title, opener = $("create-open")) {
  const input = $("reveal-key");
  input.value = created.key;
  state.revealClosing = false;
  $("reveal-confirm").hidden = true;
  $("copy-status").textContent = "";
  $("reveal-title").textContent = title;
  openDialog($("reveal-dialog"), opener);
  input.focus();
  input.select();
}

async function copyKey() {
  const input = $("reveal-key");
  try {
    await navigator.clipboard.writeText(input.value);
    $("copy-status").textContent = "Copied to the clipboard.";
  } catch (err) {
    input.select();
    const ok = document.execCommand && document.execCommand("copy");
    $("copy-status").textContent = ok ? "Copied to the clipboard." : "Copy it by hand: the key is selected.";
  }
}

// Escape (or any other close request) does not throw the secret away: the admin is told it
// will not be shown again and closes the dialog with "I have copied it".
function refuseRevealClose(event) {
  event.preventDefault();
  $("reveal-confirm").hidden = false;
}

function closeReveal() {
  state.revealClosing = true;
  $("reveal-dialog").close();
}

$("reveal-dialog").addEventListener("keydown", (event) => {
  if (event.key === "Escape") refuseRevealClose(event);
});
$("reveal-dialog").addEventListener("cancel", refuseRevealClose);
$("reveal-dialog").addEventListener("close", () => {
  if (!state.revealClosing) {
    // Closed by the browser without asking us (a repeated close request may not be refusable):
    // show the key again rather than lose it.
    $("reveal-dialog").showModal();
    $("reveal-confirm").hidden = false;
    return;
  }
  // The secret leaves the page here: nothing keeps it after the dialog closes.
  $("reveal-key").value = "";
  $("reveal-confirm").hidden = true;
  $("reveal-title").textContent = "Your new API key";
  $("copy-status").textContent = "";
  document.dispatchEvent(new CustomEvent(REVEAL_CLOSED));
});

$("copy-key").addEventListener("click", copyKey);
$("reveal-done").addEventListener("click", closeReveal);
