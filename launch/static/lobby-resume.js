/* Where this participant's wait stands, asked of the gateway when the lobby loads (GET /lobby/state): when
 * the wait began and whether the device test already passed, so a reload resumes at the waiting step with
 * the original time. A session that moved to another device answers { moved: true }. */
import { formatTime } from "./patient-header.js";

export function lobbyState(url) {
  return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then((response) => response.json().catch(() => ({})).then((body) => {
      if (response.ok) {
        return { waitingSince: body.waiting_since || null, devicePassed: body.device_test_passed === true };
      }
      return { moved: body.error === "session_moved", ended: true };
    }))
    .catch(() => ({ waitingSince: null, devicePassed: false, unknown: true }));
}

/** Show "Waiting since <time>" under the waiting step. */
export function showWaitingSince(iso) {
  const box = document.getElementById("waiting-since");
  const text = iso && formatTime(iso, false);
  if (!box || !text) return;
  const time = box.querySelector("time");
  time.setAttribute("datetime", iso);
  time.textContent = text;
  box.hidden = false;
}

/** Say that the visit moved to another device (the page then stops). */
export function showMoved() {
  const box = document.getElementById("moved");
  if (!box) return;
  box.textContent = box.dataset.text;
  box.hidden = false;
}
