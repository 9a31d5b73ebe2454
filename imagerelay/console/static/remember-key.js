/* On the page that shows a new key once: keep it in this tab's sessionStorage so the
 * playground can use it without a paste (playground.js reads "imagerelay.key.<token id>").
 * sessionStorage lives only as long as the tab and never leaves the browser. */
(function () {
  "use strict";
  var shown = document.querySelector("#new-key[data-token-id]");
  if (!shown) return;
  try {
    window.sessionStorage.setItem("imagerelay.key." + shown.dataset.tokenId, shown.textContent.trim());
  } catch (e) { /* storage off: the playground asks for a paste instead */ }
})();
