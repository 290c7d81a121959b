/* Shared by the patient's pages: translated strings, in-app browser detection, the copy-link button. */
(function () {
  "use strict";

  var strings = {};
  try {
    strings = JSON.parse(document.getElementById("i18n").textContent || "{}");
  } catch (e) {
    strings = {};
  }

  /** A translated string by key (the catalog renders them into <script id="i18n">). */
  function t(key) {
    return Object.prototype.hasOwnProperty.call(strings, key) ? strings[key] : key;
  }

  /** Browsers inside other apps (Facebook, Instagram, LINE, Android WebViews) often cannot use the camera. */
  function looksInApp() {
    var ua = navigator.userAgent || "";
    return /FBAN|FBAV|FB_IAB|Instagram|\bLine\/|; wv\)|MicroMessenger|Snapchat/i.test(ua);
  }

  function canUseMedia() {
    return !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
  }

  /** Wire #copy-link: getUrl() resolves to the link to copy; falls back to a selectable field. */
  function setupCopyLink(getUrl) {
    var button = document.getElementById("copy-link");
    var status = document.getElementById("copy-status");
    var fallback = document.getElementById("copy-fallback");
    if (!button) return;
    button.addEventListener("click", function () {
      button.disabled = true;
      Promise.resolve()
        .then(getUrl)
        .then(function (url) {
          fallback.value = url;
          if (!navigator.clipboard || !navigator.clipboard.writeText) throw new Error("no clipboard");
          return navigator.clipboard.writeText(url).then(function () {
            status.textContent = t("link_copied");
          });
        })
        .catch(function () {
          status.textContent = t("link_copy_failed");
          if (fallback.value) {
            fallback.hidden = false;
            fallback.focus();
            fallback.select();
          }
        })
        .then(function () {
          button.disabled = false;
        });
    });
  }

  /** Show the in-app guidance when this browser cannot take part; returns whether it was shown. */
  function guideIfInApp(getUrl) {
    var box = document.getElementById("inapp");
    if (!box || (!looksInApp() && canUseMedia())) return false;
    box.hidden = false;
    setupCopyLink(getUrl);
    return true;
  }

  window.VG = { t: t, looksInApp: looksInApp, canUseMedia: canUseMedia, guideIfInApp: guideIfInApp };
})();
