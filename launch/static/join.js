/* The join page: guidance for in-app browsers, whose copy-link button copies this (still unused) link. */
(function () {
  "use strict";
  window.VG.guideIfInApp(function () {
    return window.location.href;
  });
})();
