/* The lobby: display name, device test (camera, microphone level, speaker, connection), then wait to be
 * admitted. Speaks the presence protocol (docs/presence-protocol.md) over /ws; the vg_participant cookie
 * authenticates the socket. Reconnects with bounded exponential backoff, resuming with `after`. */
(function () {
  "use strict";

  var VG = window.VG;
  var t = VG.t;
  var root = document.getElementById("lobby");
  var $ = function (id) { return document.getElementById(id); };

  var MAX_ATTEMPTS = 8; // about two minutes of retrying before asking the patient
  var MAX_DELAY_MS = 30000;
  var NAME_KEY = "visitgate.display_name";

  var displayName = null;
  var socket = null;
  var frameId = 0;
  var authId = null;
  var connected = false;
  var lastId = null; // the last presence event id seen, for `after` on resume
  var participant = null;
  var attempts = 0;
  var reconnectTimer = null;
  var finished = false; // admitted, or the session ended: no more reconnecting
  var stream = null;
  var mediaOk = false;
  var mediaSettled = false; // the camera/microphone check has answered, one way or the other
  var audioOnly = false;
  var audioContext = null;
  var meterFrame = null;
  var deviceResult = null; // null until the patient is ready; then whether the device test passed
  var deviceResultSent = false;

  // --- connection -------------------------------------------------------------------------------

  function setConnection(key) {
    $("connection").textContent = t(key);
  }

  function send(frame) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    frameId += 1;
    frame.id = frameId;
    socket.send(JSON.stringify(frame));
    return frameId;
  }

  function connect() {
    reconnectTimer = null;
    if (finished) return;
    setConnection(attempts ? "reconnecting" : "connecting");
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var ws;
    try {
      ws = new WebSocket(scheme + window.location.host + root.dataset.ws);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    socket = ws;
    ws.addEventListener("open", function () {
      if (ws === socket) authId = send({ type: "auth", where: "lobby" });
    });
    ws.addEventListener("message", function (event) {
      if (ws !== socket) return;
      var message;
      try {
        message = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      onMessage(message);
    });
    ws.addEventListener("close", function (event) {
      if (ws !== socket) return;
      socket = null;
      connected = false;
      updateReady();
      if (event.code === 4401) {
        sessionEnded();
      } else if (!finished) {
        scheduleReconnect();
      }
    });
  }

  function scheduleReconnect() {
    if (finished || reconnectTimer) return;
    attempts += 1;
    if (attempts > MAX_ATTEMPTS) {
      setConnection("connection_failed");
      $("retry-devices").hidden = false;
      return;
    }
    setConnection("reconnecting");
    var delay = Math.min(MAX_DELAY_MS, 1000 * Math.pow(2, attempts - 1));
    delay = delay / 2 + Math.random() * delay / 2; // jitter, so a restarted server is not hit all at once
    reconnectTimer = window.setTimeout(connect, delay);
  }

  function sessionEnded() {
    finished = true;
    setConnection("session_ended");
    stopMedia();
    ["name-continue", "ready", "audio-only", "retry-devices", "speaker-test"].forEach(function (id) {
      $(id).disabled = true;
    });
  }

  function onMessage(message) {
    switch (message.type) {
      case "auth_ok":
        connected = true;
        attempts = 0;
        participant = message.participant;
        setConnection("connected");
        send({ type: "hello", display_name: displayName });
        if (deviceResult !== null && !deviceResultSent) sendDeviceResult();
        send({ type: "subscribe", after: lastId });
        updateReady();
        break;
      case "error":
        if (message.id === authId) sessionEnded();
        break;
      case "snapshot":
        var decision = null;
        (message.events || []).forEach(function (event) {
          decision = decisionOf(event) || decision;
        });
        lastId = message.last_id;
        if (decision) decide(decision);
        break;
      case "event":
        if (lastId !== null && message.id <= lastId) return; // already seen before a reconnect
        lastId = message.id;
        var kind = decisionOf(message);
        if (kind) decide(kind);
        break;
      default:
        break;
    }
  }

  function decisionOf(event) {
    if (event.participant !== participant) return null;
    return ["admitted", "denied", "removed"].indexOf(event.kind) >= 0 ? event.kind : null;
  }

  function decide(kind) {
    if (kind === "admitted") {
      finished = true;
      $("wait-status").textContent = t("admitted");
      stopMedia();
      if (socket) socket.close(1000);
      window.location.assign(root.dataset.room);
    } else {
      // Denied, or sent back from the room: the patient stays here; a later admission still lets them in.
      var denied = $("denied");
      denied.textContent = t(kind);
      denied.hidden = false;
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

  function ensureAudioContext() {
    var Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    if (!audioContext) audioContext = new Ctx();
    if (audioContext.state === "suspended") audioContext.resume();
    return audioContext;
  }

  function stopMedia() {
    if (meterFrame !== null) window.cancelAnimationFrame(meterFrame);
    meterFrame = null;
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
    if (!VG.canUseMedia()) {
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
      startMeter(got);
      updateReady();
    }).catch(function (error) {
      var name = error && error.name;
      if (name === "NotAllowedError" || name === "SecurityError") {
        showProblem("camera_denied");
      } else if (name === "NotFoundError" || name === "OverconstrainedError") {
        showProblem("camera_missing");
      } else if (name === "NotReadableError" || name === "AbortError") {
        showProblem("camera_busy");
      } else {
        showProblem("camera_failed");
      }
      setDeviceStatus(null);
      $("retry-devices").hidden = false;
      mediaSettled = true;
      updateReady();
    });
  }

  function startMeter(got) {
    var ctx = ensureAudioContext();
    if (!ctx || got.getAudioTracks().length === 0) return;
    var analyser = ctx.createAnalyser();
    analyser.fftSize = 1024;
    ctx.createMediaStreamSource(got).connect(analyser);
    var samples = new Uint8Array(analyser.fftSize);
    var meter = $("mic-level");
    function draw() {
      analyser.getByteTimeDomainData(samples);
      var sum = 0;
      for (var i = 0; i < samples.length; i += 1) {
        var v = (samples[i] - 128) / 128;
        sum += v * v;
      }
      meter.value = Math.min(1, Math.sqrt(sum / samples.length) * 4);
      meterFrame = window.requestAnimationFrame(draw);
    }
    draw();
  }

  function playTestSound() {
    var ctx = ensureAudioContext();
    if (!ctx) return;
    var status = $("speaker-status");
    status.textContent = t("tone_playing");
    // A short two-note chime, made on the spot: no sound file to fetch.
    var now = ctx.currentTime;
    [[660, 0], [880, 0.45]].forEach(function (note, index, notes) {
      var osc = ctx.createOscillator();
      var gain = ctx.createGain();
      osc.type = "sine";
      osc.frequency.value = note[0];
      gain.gain.setValueAtTime(0.0001, now + note[1]);
      gain.gain.exponentialRampToValueAtTime(0.25, now + note[1] + 0.03);
      gain.gain.exponentialRampToValueAtTime(0.0001, now + note[1] + 0.4);
      osc.connect(gain).connect(ctx.destination);
      osc.start(now + note[1]);
      osc.stop(now + note[1] + 0.42);
      if (index === notes.length - 1) {
        osc.addEventListener("ended", function () { status.textContent = t("tone_done"); });
      }
    });
  }

  function updateReady() {
    // Waiting makes sense once the visit can hear from us and the device check has answered (passed or
    // failed: a failed one still lets the patient wait, and the clinician sees the problem).
    $("ready").disabled = finished || !connected || !mediaSettled;
  }

  function sendDeviceResult() {
    deviceResultSent = send({ type: "device_test", passed: deviceResult }) !== false;
  }

  function goWait() {
    deviceResult = mediaOk;
    deviceResultSent = false;
    sendDeviceResult();
    stopMedia(); // the camera light goes off while waiting; the room asks again
    $("step-devices").hidden = true;
    $("step-wait").hidden = false;
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
    displayName = value;
    try {
      // Kept in this tab only, so a reload or a return from the room need not ask again.
      window.sessionStorage.setItem(NAME_KEY, value);
    } catch (e) { /* storage may be off; the name is then asked again */ }
    $("step-name").hidden = true;
    $("step-devices").hidden = false;
    ensureAudioContext(); // created in the click, so browsers let it play sound
    VG.guideIfInApp(function () {
      return fetch(root.dataset.handoff, { method: "POST", credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) throw new Error("handoff refused");
          return response.json();
        })
        .then(function (body) { return body.url; });
    });
    if (!socket && !reconnectTimer) connect();
    startDevices();
  });

  try {
    $("display-name").value = window.sessionStorage.getItem(NAME_KEY) || "";
  } catch (e) { /* no storage: the field starts empty */ }

  $("speaker-test").addEventListener("click", playTestSound);
  $("ready").addEventListener("click", goWait);
  $("audio-only").addEventListener("click", function () {
    audioOnly = true;
    if (!VG.canUseMedia() && connected) {
      goWait();
      return;
    }
    startDevices();
  });
  $("retry-devices").addEventListener("click", function () {
    if (!connected && !socket) {
      attempts = 0;
      connect();
    }
    startDevices();
  });
})();
