/* OTA change control: small progressive enhancements (the pages work without this file).
   - <time class="local-time" datetime="...Z"> is rewritten to the viewer's time zone; the UTC value stays in the title.
   - Runs on load and again after every htmx swap, so live fragments get local times too. */
(function () {
  "use strict";

  var formatter;
  try {
    formatter = new Intl.DateTimeFormat(undefined, {
      year: "numeric", month: "short", day: "2-digit",
      hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZoneName: "short"
    });
  } catch (err) {
    formatter = null;
  }

  function localise(root) {
    if (!formatter || !root || !root.querySelectorAll) { return; }
    var nodes = root.querySelectorAll("time[datetime][data-utc]");
    for (var i = 0; i < nodes.length; i++) {
      var node = nodes[i];
      if (node.getAttribute("data-localised") === "1") { continue; }
      var when = new Date(node.getAttribute("datetime"));
      if (isNaN(when.getTime())) { continue; }
      node.textContent = formatter.format(when);
      node.setAttribute("data-localised", "1");
    }
  }

  window.otaLocaliseTimes = localise;

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { localise(document); });
  } else {
    localise(document);
  }
  // After a swap the swapped element may already be detached (outerHTML), so scan the document:
  // times that were rewritten before carry data-localised and are skipped.
  document.addEventListener("htmx:afterSwap", function () { localise(document); });
  document.addEventListener("htmx:oobAfterSwap", function () { localise(document); });
})();
