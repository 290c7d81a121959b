/* Shared by the patient's pages (join, lobby): in-app browser detection and the copy-link button. Words come
 * from i18n.js like every page's. */
import { t } from "./i18n.js";

/** Browsers inside other apps (Facebook, Instagram, LINE, Android WebViews) often cannot use the camera. */
export function looksInApp() {
  const ua = navigator.userAgent || "";
  return /FBAN|FBAV|FB_IAB|Instagram|\bLine\/|; wv\)|MicroMessenger|Snapchat/i.test(ua);
}

/** Whether this browser offers the camera and microphone at all. */
export function canUseMedia() {
  return !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
}

/** Wire #copy-link: getUrl() resolves to the link to copy; falls back to a selectable field. */
function setupCopyLink(getUrl) {
  const button = document.getElementById("copy-link");
  const status = document.getElementById("copy-status");
  const fallback = document.getElementById("copy-fallback");
  if (!button) return;
  button.addEventListener("click", () => {
    button.disabled = true;
    Promise.resolve()
      .then(getUrl)
      .then((url) => {
        fallback.value = url;
        if (!navigator.clipboard || !navigator.clipboard.writeText) throw new Error("no clipboard");
        return navigator.clipboard.writeText(url).then(() => {
          status.textContent = t("link_copied");
        });
      })
      .catch(() => {
        status.textContent = t("link_copy_failed");
        if (fallback.value) {
          fallback.hidden = false;
          fallback.focus();
          fallback.select();
        }
      })
      .then(() => {
        button.disabled = false;
      });
  });
}

/** Show the in-app guidance when this browser cannot take part; returns whether it was shown. */
export function guideIfInApp(getUrl) {
  const box = document.getElementById("inapp");
  if (!box || (!looksInApp() && canUseMedia())) return false;
  box.hidden = false;
  setupCopyLink(getUrl);
  return true;
}
