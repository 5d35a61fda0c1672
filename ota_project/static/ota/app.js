/* OTA change control: small progressive enhancements (the pages work without this file).
   - <time class="local-time" datetime="...Z"> is rewritten to the viewer's time zone; the UTC value stays in the title.
   - A table too wide for its .table-wrap scrolls sideways: the wrapper becomes a named, focusable region, so keyboard
     users can scroll it too (WCAG 2.1.1; axe's scrollable-region-focusable).
   - Runs on load and again after every htmx swap (and on resize), so live fragments get both too. */
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

  function scrollableTables(root) {
    if (!root || !root.querySelectorAll) { return; }
    var wraps = root.querySelectorAll(".table-wrap");
    for (var i = 0; i < wraps.length; i++) {
      var wrap = wraps[i];
      if (wrap.scrollWidth > wrap.clientWidth + 1) {
        var caption = wrap.querySelector("caption");
        wrap.setAttribute("tabindex", "0");
        wrap.setAttribute("role", "region");
        if (!wrap.hasAttribute("aria-label")) {
          wrap.setAttribute("aria-label", (caption && caption.textContent.trim()) || "Table (scrolls sideways)");
        }
      } else if (wrap.getAttribute("role") === "region") {
        wrap.removeAttribute("tabindex");
        wrap.removeAttribute("role");
      }
    }
  }

  function enhance() {
    localise(document);
    scrollableTables(document);
  }

  window.otaLocaliseTimes = localise;

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", enhance);
  } else {
    enhance();
  }
  // After a swap the swapped element may already be detached (outerHTML), so scan the document:
  // times that were rewritten before carry data-localised and are skipped.
  document.addEventListener("htmx:afterSwap", enhance);
  document.addEventListener("htmx:oobAfterSwap", enhance);
  window.addEventListener("resize", function () { scrollableTables(document); });
})();
