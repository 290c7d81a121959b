/* The end of a visit (docs/presence-protocol.md, "end_visit"): the notice every page shows once a
 * `visit_ended` event arrives, and the clinician's End visit button, which asks for confirmation first.
 * The markup is launch/templates/visit_end.html; a page without it gets nothing from this module. */
import { t } from "./i18n.js";

const $ = (id) => document.getElementById(id);

/** Show that the visit has ended and take the End visit button away. */
export function showEnded() {
  const notice = $("visit-ended");
  if (notice && notice.hidden) {
    notice.hidden = false;
    notice.focus();
  }
  const control = $("end-visit");
  if (control) control.hidden = true;
  document.documentElement.dataset.visitEnded = "true";
}

/** Look at one presence event: true (and the notice shown) when it ends the visit. */
export function watch(event) {
  if (!event || event.kind !== "visit_ended") return false;
  showEnded();
  return true;
}

/** Wire the End visit button (if the page has one) to the presence client: ask, then send end_visit. */
export function endVisitButton(presence) {
  const root = $("end-visit");
  if (!root) return;
  const start = root.querySelector("[data-end-visit-start]");
  const confirm = root.querySelector("[data-end-visit-confirm]");
  const yes = root.querySelector("[data-end-visit-yes]");
  const no = root.querySelector("[data-end-visit-no]");
  const error = root.querySelector("[data-end-visit-error]");
  start.addEventListener("click", () => {
    error.hidden = true;
    confirm.hidden = false;
    start.hidden = true;
    no.focus();  // the safe answer first
  });
  no.addEventListener("click", () => {
    confirm.hidden = true;
    start.hidden = false;
    start.focus();
  });
  yes.addEventListener("click", () => {
    yes.disabled = true;
    presence.request({ type: "end_visit" })
      .then(() => showEnded())
      .catch((err) => {
        const key = "error." + (err && err.code ? err.code : "other");
        error.textContent = t(key) === key ? t("error.other", { code: err && err.code }) : t(key);
        error.hidden = false;
        yes.disabled = false;
      });
  });
}
