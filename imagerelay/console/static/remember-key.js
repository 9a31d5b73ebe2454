/* On the page that shows a new key once: keep it in this tab's sessionStorage so the
 * playground can use it without a paste (playground.js reads "imagerelay.key.<token id>").
 * sessionStorage lives only as long as the tab and never leaves the browser. */
(function () {
  "use strict";
  var section = document.querySelector("[data-token-id]");
  var shown = document.getElementById("new-key");
  if (!section || !shown) return;
  try {
    window.sessionStorage.setItem("imagerelay.key." + section.dataset.tokenId, shown.textContent.trim());
  } catch (e) { /* storage off: the playground asks for a paste instead */ }
})();
