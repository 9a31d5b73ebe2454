// Copy buttons: <button data-copy="ID"> copies the text of element ID and says so in
// the element with data-copy-status="ID" (a live region). No inline script: the CSP.
"use strict";
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const id = button.getAttribute("data-copy");
  const source = document.getElementById(id);
  const status = document.querySelector(`[data-copy-status="${id}"]`);
  if (!source) return;
  const text = source.textContent;
  try {
    await navigator.clipboard.writeText(text);
    if (status) status.textContent = "Copied.";
  } catch (err) {
    // No clipboard permission (plain HTTP, old browser): select it for Ctrl+C instead.
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    if (status) status.textContent = "Selected: press Ctrl+C (or Cmd+C) to copy.";
  }
});
