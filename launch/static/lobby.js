/* The lobby: display name, device test (camera, microphone level, speaker, connection), then wait to be
 * admitted. Speaks the presence protocol through the one presence client (presence-client.js); the
 * vg_participant cookie authenticates the socket. */
import { announce } from "./announce.js";
import { t } from "./i18n.js";
import { PresenceClient } from "./presence-client.js";
import { canUseMedia, guideIfInApp } from "./patient-common.js";
import { Chat, chatRoot } from "./chat.js";
import { checkConnection, checkStarted, deviceReport, heard } from "./connection-check.js";
import { lobbyState, showMoved, showWaitingSince } from "./lobby-resume.js";
import * as visitEnd from "./visit-end.js";
import { ensureAudioContext, mediaProblem, playTestSound, startMeter } from "./device-media.js";

const root = document.getElementById("lobby");
const $ = (id) => document.getElementById(id);

const MAX_ATTEMPTS = 8; // about two minutes of retrying before asking the patient
const NAME_KEY = "visitgate.display_name";
const DEVICE_RESULT_RETRIES = 5; // a device test result the gateway could not store is sent again this often

let displayName = null;
let connected = false;
let participant = null;
let finished = false; // admitted, or the session ended: no more reconnecting
let stream = null;
let mediaOk = false;
let mediaSettled = false; // the camera/microphone check has answered, one way or the other
let audioOnly = false;
let stopMeter = () => {};
let deviceResult = null; // null until the patient is ready; then whether the device test passed
let deviceResultSent = false;
let deviceResultTries = 0;
let deviceRetryTimer = null;
let devicesFound = { camera: false, microphone: false }; // what the camera/microphone check found
let movedAway = false; // the gateway said this session moved to another device

// --- connection -------------------------------------------------------------------------------

function setConnection(key) {
  $("connection").textContent = t(key);
}

// Waiting-room chat with the clinician (chat.js), when the clinic has it on.
const chat = chatRoot() ? new Chat(chatRoot(), { request: (frame) => presence.request(frame) }) : null;

const presence = new PresenceClient({
  url: root.dataset.ws,
  maxAttempts: MAX_ATTEMPTS,
  baseDelayMs: 1000,
  maxDelayMs: 30000,
  auth: () => ({ where: "lobby" }),
  onStatus: (state) => {
    if (state === "open") return; // "connected" once the name and device result are on their way
    connected = false;
    updateReady();
    if (state === "connecting" || state === "reconnecting") setConnection(state);
    else if (state === "failed") {
      setConnection("connection_failed");
      $("retry-devices").hidden = false;
    }
  },
  onAuthenticated: (info) => {
    connected = true;
    participant = info.participant;
    if (chat) chat.setSelf(participant);
    setConnection("connected");
    presence.send({ type: "hello", display_name: displayName });
    if (deviceResult !== null && !deviceResultSent) sendDeviceResult();
    if (!checkStarted()) checkConnection(presence, onConnectionChecked);
    updateReady();
  },
  onSnapshot: (events) => {
    let decision = null;
    events.forEach((event) => { decision = decisionOf(event) || decision; });
    if (events.some(visitEnd.watch)) { sessionEnded(); return; }
    if (decision) decide(decision);
  },
  onEvent: (event) => {
    if (visitEnd.watch(event)) { sessionEnded(); return; }
    const kind = decisionOf(event);
    if (kind) decide(kind);
  },
  onEnded: () => (movedAway ? moved() : sessionEnded()),
  onError: (code) => { if (code === "session_moved") movedAway = true; },
  onFrame: (frame) => {
    if (chat) chat.frame(frame);
    // Sent to every socket of this participant when its link was opened on another device: ours, if the
    // gateway now refuses this browser's session.
    if (frame.type === "session_moved") lobbyState(root.dataset.state).then((state) => { if (state.moved) moved(); });
  },
});

function moved() {
  movedAway = true;
  sessionEnded();
  showMoved();
}

function connect() {
  if (!finished) presence.start();
}

function sessionEnded() {
  finished = true;
  presence.stop();
  setConnection("session_ended");
  stopMedia();
  ["name-continue", "ready", "audio-only", "retry-devices", "speaker-test"].forEach((id) => {
    $(id).disabled = true;
  });
}

function decisionOf(event) {
  if (event.participant !== participant) return null;
  return ["admitted", "denied", "removed"].indexOf(event.kind) >= 0 ? event.kind : null;
}

function decide(kind) {
  if (kind === "admitted") {
    finished = true;
    $("wait-status").textContent = t("admitted");
    announce(t("admitted"));
    stopMedia();
    presence.stop();
    window.location.assign(root.dataset.room);
  } else {
    // Denied, or sent back from the room: the patient stays here; a later admission still lets them in.
    const denied = $("denied");
    denied.textContent = t(kind);
    denied.hidden = false;
    announce(t(kind), { assertive: kind === "denied" });
  }
}

// --- devices ----------------------------------------------------------------------------------

function setDeviceStatus(key) {
  $("device-status").textContent = key ? t(key) : "";
}

function showProblem(key) {
  var box = $("device-problem");
  box.textContent = key ? t(key) : "";
  box.hidden = !key;
}

function stopMedia() {
  stopMeter();
  if (stream) stream.getTracks().forEach(function (track) { track.stop(); });
  stream = null;
  $("preview").srcObject = null;
}

function startDevices() {
  stopMedia();
  mediaOk = false;
  mediaSettled = false;
  showProblem(null);
  $("retry-devices").hidden = true;
  if (!canUseMedia()) {
    showProblem("no_media");
    mediaSettled = true;
    updateReady();
    return;
  }
  setDeviceStatus("camera_starting");
  var constraints = audioOnly ? { audio: true, video: false } : { audio: true, video: { facingMode: "user" } };
  navigator.mediaDevices.getUserMedia(constraints).then(function (got) {
    stream = got;
    mediaOk = true;
    mediaSettled = true;
    var preview = $("preview");
    preview.hidden = audioOnly;
    if (!audioOnly) preview.srcObject = got;
    $("device-status").textContent = t(audioOnly ? "audio_ok" : "camera_ok") + " " + t("mic_hint");
    stopMeter = startMeter(got, $("mic-level"));
    updateReady();
  }).catch(function (error) {
    showProblem(mediaProblem(error));
    setDeviceStatus(null);
    $("retry-devices").hidden = false;
    mediaSettled = true;
    updateReady();
  });
}

function updateReady() {
  // Waiting makes sense once the visit can hear from us and the device check has answered (passed or
  // failed: a failed one still lets the patient wait, and the clinician sees the problem).
  $("ready").disabled = finished || !connected || !mediaSettled;
}

function sendDeviceResult() {
  clearTimeout(deviceRetryTimer);
  deviceRetryTimer = null;
  const passed = deviceResult;
  deviceResultSent = true;
  presence.request({ type: "device_test", passed: passed, result: deviceReport(devicesFound) }).catch((error) => {
    if (passed !== deviceResult) return; // a newer result went out meanwhile
    deviceResultSent = false; // sent again on the next connection, or below
    if (error.code === "connection_lost" || error.code === "not_connected") return;
    // The gateway could not store it (its database away, too many requests): say so, and try again soon.
    $("wait-status").textContent = t("not_saved");
    announce(t("not_saved"));
    deviceResultTries += 1;
    if (deviceResultTries <= DEVICE_RESULT_RETRIES) {
      deviceRetryTimer = setTimeout(() => { if (presence.ready && !deviceResultSent) sendDeviceResult(); }, 5000);
    }
  }).then(() => {
    if (deviceResultSent && passed === deviceResult) $("wait-status").textContent = t("waiting_keep_open");
  });
}

function onConnectionChecked() {
  // A check that ends after the patient went on to wait: the clinician gets the fuller result.
  if (deviceResult !== null && presence.ready) sendDeviceResult();
}

function goWait() {
  devicesFound = { camera: mediaOk && !audioOnly, microphone: mediaOk };
  deviceResult = mediaOk && heard() !== false;
  deviceResultSent = false;
  sendDeviceResult();
  stopMedia(); // the camera light goes off while waiting; the room asks again
  $("step-devices").hidden = true;
  $("step-wait").hidden = false;
  $("wait-title").focus(); // the button pressed is gone: keyboard and screen reader users start at the new step
  lobbyState(root.dataset.state).then((state) => showWaitingSince(state.waitingSince));
}

function resumeWaiting(name, since) {
  // A reload (or a return) in the middle of a wait: same place, same time, no second device test.
  displayName = name;
  deviceResult = true;
  deviceResultSent = true; // stored already
  $("step-name").hidden = true;
  $("step-devices").hidden = true;
  $("step-wait").hidden = false;
  showWaitingSince(since);
  connect();
}

// --- wiring -----------------------------------------------------------------------------------

$("name-form").addEventListener("submit", function (event) {
  event.preventDefault();
  var value = $("display-name").value.replace(/\s+/g, " ").trim().slice(0, 60);
  if (!value) {
    $("name-error").textContent = t("name_required");
    $("display-name").focus();
    return;
  }
  $("name-error").textContent = "";
  try {
    // Kept in this tab only, so a reload or a return from the room need not ask again.
    window.sessionStorage.setItem(NAME_KEY, value);
  } catch (e) { /* storage may be off; the name is then asked again */ }
  begin(value);
});

function begin(value) {
  displayName = value;
  $("step-name").hidden = true;
  $("step-devices").hidden = false;
  $("devices-title").focus(); // as in goWait: focus follows the step
  ensureAudioContext(); // created in the click, so browsers let it play sound
  guideIfInApp(function () {
    return fetch(root.dataset.handoff, { method: "POST", credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("handoff refused");
        return response.json();
      })
      .then(function (body) { return body.url; });
  });
  connect();
  startDevices();
}

try {
  $("display-name").value = window.sessionStorage.getItem(NAME_KEY) || "";
} catch (e) { /* no storage: the field starts empty */ }

// The name the EHR has (a portal launch) is not asked for; a wait under way resumes where it was.
lobbyState(root.dataset.state).then((state) => {
  if (state.moved) { moved(); return; }
  if (state.ended || displayName !== null) return;
  const name = root.dataset.name || $("display-name").value.trim();
  if (state.waitingSince && state.devicePassed && name) resumeWaiting(name, state.waitingSince);
  else if (root.dataset.name) begin(root.dataset.name);
});

$("speaker-test").addEventListener("click", () => playTestSound($("speaker-status")));
$("ready").addEventListener("click", goWait);
$("audio-only").addEventListener("click", function () {
  audioOnly = true;
  if (!canUseMedia() && connected) {
    goWait();
    return;
  }
  startDevices();
});
$("retry-devices").addEventListener("click", function () {
  if (!connected && !finished) connect(); // start() begins again without the backoff it had built up
  startDevices();
  if (presence.ready) checkConnection(presence, onConnectionChecked);
});
