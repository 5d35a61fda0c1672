/* OTA change control: small progressive enhancements (the pages work without this file).
   - The browser's time zone is sent to the server in the ota_tz cookie; a <time data-utc> rendered in another zone
     (a first visit) is rewritten to the browser's zone here; the UTC value stays in the title.
   - A table too wide for its .table-wrap scrolls sideways: the wrapper becomes a named, focusable region, so keyboard
     users can scroll it too (WCAG 2.1.1; axe's scrollable-region-focusable).
   - Runs on load and again after every htmx swap (and on resize), so live fragments get both too. */
(function () {
  "use strict";

  // The browser's zone goes to the server in the ota_tz cookie (ota_project.web.zones), which renders every time on
  // that clock; times rendered in another zone (the first page, before the cookie existed) are re-rendered here.
  var zone = "";
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (err) {
    zone = "";
  }
  if (zone && /^[A-Za-z][A-Za-z0-9_+\-]*(\/[A-Za-z0-9_+\-]+){0,2}$/.test(zone)) {
    var current = document.cookie.match(/(?:^|;\s*)ota_tz=([^;]*)/);
    if (!current || current[1] !== zone) {
      document.cookie = "ota_tz=" + zone + "; path=/; max-age=31536000; SameSite=Lax";  // tz names are cookie-safe (checked above)
    }
  }

  var formatter;
  try {
    formatter = new Intl.DateTimeFormat("en-GB", {
      year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZoneName: "short"
    });
  } catch (err) {
    formatter = null;
  }

  // "2026-12-06 05:10 CET": the server's format (24-hour, ISO order, the zone's short name).
  function shownTime(when) {
    var parts = {};
    var list = formatter.formatToParts(when);
    for (var i = 0; i < list.length; i++) { parts[list[i].type] = list[i].value; }
    return parts.year + "-" + parts.month + "-" + parts.day + " " + parts.hour + ":" + parts.minute +
      (parts.timeZoneName ? " " + parts.timeZoneName : "");
  }

  function localise(root) {
    if (!formatter || !zone || !root || !root.querySelectorAll) { return; }
    var nodes = root.querySelectorAll("time[datetime][data-utc]");
    for (var i = 0; i < nodes.length; i++) {
      var node = nodes[i];
      if (node.getAttribute("data-zone") === zone || node.getAttribute("data-localised") === "1") { continue; }
      var when = new Date(node.getAttribute("datetime"));
      if (isNaN(when.getTime())) { continue; }
      node.textContent = shownTime(when);
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
