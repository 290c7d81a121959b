/* The standalone device test (GET /device-test): camera and microphone preview, the test sound and its question,
 * and a connection check with the configured STUN servers only (connection-check.js's checkWithoutRelay). Built
 * from the lobby's own pieces (device-media.js, connection-check.js); nothing leaves the page.
 *
 * Tests read window.visitgateDeviceTest: {media: null | "ok" | <problem key>, heard, finished}. */
import { t } from "./i18n.js";
import { canUseMedia } from "./patient-common.js";
import { checkWithoutRelay } from "./connection-check.js";
import { ensureAudioContext, mediaProblem, playTestSound, startMeter } from "./device-media.js";

const root = document.getElementById("device-test");
const $ = (id) => document.getElementById(id);
const view = { media: null, heard: null, network: false, finished: false };
window.visitgateDeviceTest = view;

let stream = null;
let stopMeter = () => {};

function parseStun() {
  try {
    const urls = JSON.parse(root.dataset.stun || "[]");
    return Array.isArray(urls) ? urls.filter((u) => typeof u === "string" && /^stuns?:/.test(u)) : [];
  } catch (err) {
    return [];
  }
}

function showProblem(key) {
  const box = $("device-problem");
  box.textContent = key ? t(key) : "";
  box.hidden = !key;
}

function stopMedia() {
  stopMeter();
  stopMeter = () => {};
  if (stream) stream.getTracks().forEach((track) => track.stop());
  stream = null;
  $("preview").srcObject = null;
}

function startDevices() {
  stopMedia();
  view.media = null;
  showProblem(null);
  $("retry-devices").hidden = true;
  if (!canUseMedia()) {
    view.media = "no_media";
    showProblem("no_media");
    return;
  }
  $("device-status").textContent = t("camera_starting");
  navigator.mediaDevices.getUserMedia({ audio: true, video: { facingMode: "user" } }).then((got) => {
    stream = got;
    view.media = "ok";
    const preview = $("preview");
    preview.hidden = false;
    preview.srcObject = got;
    $("device-status").textContent = t("camera_ok") + " " + t("mic_hint");
    stopMeter = startMeter(got, $("mic-level"));
  }).catch((error) => {
    view.media = mediaProblem(error);
    showProblem(view.media);
    $("device-status").textContent = "";
    $("retry-devices").hidden = false;
  });
}

function maybeFinish(moveFocus) {
  // The end: the sound question answered and the connection check done (the camera has answered long before).
  if (view.finished || view.heard === null || !view.network) return;
  view.finished = true;
  $("step-done").hidden = false;
  if (moveFocus) $("done-title").focus();
}

function checkNetwork() {
  view.network = false;
  checkWithoutRelay(parseStun(), () => {
    view.network = true;
    maybeFinish(false);
  });
}

function begin() {
  ensureAudioContext(); // created in the click, so browsers let it play sound
  $("step-start").hidden = true;
  $("step-devices").hidden = false;
  $("devices-title").focus(); // the button pressed is gone: keyboard and screen reader users start here
  startDevices();
  checkNetwork();
}

$("start-test").addEventListener("click", begin);
$("retry-devices").addEventListener("click", startDevices);
$("speaker-test").addEventListener("click", () => playTestSound($("speaker-status"), (heard) => {
  view.heard = heard;
  maybeFinish(true);
}));
$("test-again").addEventListener("click", () => {
  view.finished = false;
  view.heard = null;
  $("step-done").hidden = true;
  $("speaker-answer").hidden = true;
  ["speaker-yes", "speaker-no"].forEach((id) => $(id).setAttribute("aria-pressed", "false"));
  $("speaker-status").textContent = "";
  $("devices-title").focus();
  startDevices();
  checkNetwork();
});
window.addEventListener("pagehide", stopMedia);
