/* The camera, microphone and speaker half of the device test, shared by the lobby (lobby.js) and the standalone
 * device test page (device-test.js): the microphone's level meter, the test sound, and what a failed
 * getUserMedia means to the patient. The words come from i18n.js like every page's. */
import { t } from "./i18n.js";
import { askHeard } from "./connection-check.js";

let audioContext = null;

/** The page's one AudioContext, created (or resumed) in a click so browsers let it play sound. */
export function ensureAudioContext() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return null;
  if (!audioContext) audioContext = new Ctx();
  if (audioContext.state === "suspended") audioContext.resume();
  return audioContext;
}

/** Move the <meter> with the stream's microphone level; returns the function that stops it. */
export function startMeter(got, meter) {
  const ctx = ensureAudioContext();
  if (!ctx || got.getAudioTracks().length === 0) return () => {};
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(got).connect(analyser);
  const samples = new Uint8Array(analyser.fftSize);
  let frame = null;
  function draw() {
    analyser.getByteTimeDomainData(samples);
    let sum = 0;
    for (let i = 0; i < samples.length; i += 1) {
      const v = (samples[i] - 128) / 128;
      sum += v * v;
    }
    meter.value = Math.min(1, Math.sqrt(sum / samples.length) * 4);
    frame = window.requestAnimationFrame(draw);
  }
  draw();
  return () => { if (frame !== null) window.cancelAnimationFrame(frame); frame = null; };
}

/** Play the test sound, then ask "did you hear the sound?" (askHeard, which gives onAnswer the answer);
 * `status` says what is happening. */
export function playTestSound(status, onAnswer) {
  const ctx = ensureAudioContext();
  if (!ctx) return;
  status.textContent = t("tone_playing");
  // A short two-note chime, made on the spot: no sound file to fetch.
  const now = ctx.currentTime;
  [[660, 0], [880, 0.45]].forEach((note, index, notes) => {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = "sine";
    osc.frequency.value = note[0];
    gain.gain.setValueAtTime(0.0001, now + note[1]);
    gain.gain.exponentialRampToValueAtTime(0.25, now + note[1] + 0.03);
    gain.gain.exponentialRampToValueAtTime(0.0001, now + note[1] + 0.4);
    osc.connect(gain).connect(ctx.destination);
    osc.start(now + note[1]);
    osc.stop(now + note[1] + 0.42);
    if (index === notes.length - 1) {
      osc.addEventListener("ended", () => { status.textContent = t("tone_done"); askHeard(onAnswer); });
    }
  });
}

/** The string key that explains a getUserMedia failure to the patient. */
export function mediaProblem(error) {
  const name = error && error.name;
  if (name === "NotAllowedError" || name === "SecurityError") return "camera_denied";
  if (name === "NotFoundError" || name === "OverconstrainedError") return "camera_missing";
  if (name === "NotReadableError" || name === "AbortError") return "camera_busy";
  return "camera_failed";
}
