// A provider page's URL (/provider/{handle}, /provider/{handle}/room) carries a handle that works for minutes
// only, so the copies the browser keeps in its history soon stop working. While the page is open it trades
// the handle for a fresh one before it runs out (POST /provider/{handle}/renew), puts the fresh one in its
// URL without a navigation, and updates the links that carried the old one. Pages (ES modules) import
// current() to authenticate with and onChange() to hear of a new handle; on other pages both are inert.
var parts = window.location.pathname.split("/").filter(Boolean);
var onProviderPage = parts[0] === "provider" && !!parts[1];
var handle = onProviderPage ? parts[1] : null;
var listeners = [];
var stats = { renewed: 0, failed: 0, expired: false };

/** The page's handle now (null outside /provider/{handle} pages). */
export function current() { return handle; }

/** Call fn(handle) whenever the handle is renewed. */
export function onChange(fn) { listeners.push(fn); }

export { stats };

if (onProviderPage) {
  var meta = document.querySelector('meta[name="vg-renew-in"]');
  var renewIn = Number(meta && meta.content) || 0;
  var dueAt = renewIn ? Date.now() + renewIn * 1000 : null;
  var timer = null;
  var busy = false;

  function replaceEverywhere(old, fresh) {
    var path = window.location.pathname.split("/");
    path[2] = fresh;
    window.history.replaceState(window.history.state, "", path.join("/") + window.location.search);
    document.querySelectorAll("a[href]").forEach(function (a) {
      var href = a.getAttribute("href");
      var prefix = "/provider/" + old;
      if (href === prefix || href.indexOf(prefix + "/") === 0) {
        a.setAttribute("href", "/provider/" + fresh + href.slice(prefix.length));
      }
    });
  }

  function schedule(seconds) {
    if (timer) clearTimeout(timer);
    dueAt = Date.now() + seconds * 1000;
    timer = setTimeout(renew, seconds * 1000);
  }

  function renew() {
    if (busy || stats.expired) return;
    busy = true;
    fetch("/provider/" + encodeURIComponent(handle) + "/renew", {
      method: "POST", credentials: "same-origin", cache: "no-store", headers: { "Accept": "application/json" }
    }).then(function (r) {
      return r.json().then(function (body) { return { status: r.status, body: body }; });
    }).then(function (answer) {
      busy = false;
      if (answer.status === 200 && typeof answer.body.handle === "string") {
        var old = handle;
        handle = answer.body.handle;
        stats.renewed += 1;
        replaceEverywhere(old, handle);
        listeners.forEach(function (fn) { fn(handle); });
        schedule(Math.max(1, Number(answer.body.renew_in) || renewIn));
      } else if (answer.status === 401) {
        stats.expired = true;  // the session is over: the page's socket says so when it next connects
      } else {
        fail();
      }
    }).catch(function () { busy = false; fail(); });
  }

  function fail() {
    // Offline for a moment, or the gateway restarting: try again soon, well inside the handle's lifetime.
    stats.failed += 1;
    schedule(Math.max(1, Math.min(30, renewIn / 3)));
  }

  // Timers in background tabs may be held back; catch up as soon as the page is looked at again.
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && dueAt && Date.now() >= dueAt) renew();
  });
  if (renewIn) schedule(renewIn);
}
