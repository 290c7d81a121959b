/* The lobby's connection check and "did you hear the sound?": what the device test says about the call to come.
 *
 * Through the ICE servers the gateway gives this participant (an `ice` request on the presence socket: STUN as
 * configured, TURN with coturn shared-secret credentials), it finds which candidate types gather (host, srflx,
 * relay) and whether a TURN relay is reachable: two connections in this page, both forced through the relay
 * (iceTransportPolicy "relay"), must connect, and a few data-channel pings between them give the round-trip
 * time (browser to relay and back, twice: about what a call to someone on a similar network sees).
 * Everything is bounded in time; nothing leaves the page but the result the lobby sends (lobby.js).
 *
 * The standalone device test (device-test.js) runs the same check with the configured STUN servers only.
 *
 * Tests read window.visitgateConnectionCheck: {state: "idle" | "checking" | "done", result, heard}.
 */
import { t } from "./i18n.js";

const GATHER_MS = 5000;
const RELAY_MS = 8000;
const PINGS = 5;
const TYPES = ["host", "srflx", "prflx", "relay"];

const view = { state: "idle", result: null, heard: null };
window.visitgateConnectionCheck = view;
const $ = (id) => document.getElementById(id);
let runs = 0;

function hasTurn(servers) {
  return servers.some((s) => [].concat(s.urls || []).some((u) => /^turns?:/.test(String(u))));
}

function withTimeout(promise, ms, fallback) {
  let timer;
  return Promise.race([promise, new Promise((resolve) => { timer = setTimeout(() => resolve(fallback), ms); })])
    .finally(() => clearTimeout(timer));
}

/** The candidate types one connection gathers with these servers (policy "all"). */
async function gather(servers) {
  const pc = new RTCPeerConnection({ iceServers: servers });
  const found = new Set();
  try {
    pc.createDataChannel("probe");
    const done = new Promise((resolve) => {
      pc.onicecandidate = (ev) => {
        if (!ev.candidate) { resolve(); return; }
        const type = ev.candidate.type || (/ typ (\w+)/.exec(ev.candidate.candidate) || [])[1];
        if (TYPES.indexOf(type) >= 0) found.add(type);
      };
    });
    await pc.setLocalDescription(await pc.createOffer());
    await withTimeout(done, GATHER_MS, null);
  } finally {
    pc.close();
  }
  return TYPES.filter((type) => found.has(type));
}

/** Two connections forced through the relay: whether they connect, and the median data-channel round trip. */
async function relayRoundTrip(servers) {
  const config = { iceServers: servers, iceTransportPolicy: "relay" };
  const a = new RTCPeerConnection(config);
  const b = new RTCPeerConnection(config);
  a.onicecandidate = (ev) => { if (ev.candidate) b.addIceCandidate(ev.candidate).catch(() => {}); };
  b.onicecandidate = (ev) => { if (ev.candidate) a.addIceCandidate(ev.candidate).catch(() => {}); };
  b.ondatachannel = (ev) => { ev.channel.onmessage = (m) => ev.channel.send(m.data); };
  const channel = a.createDataChannel("ping");
  try {
    const open = new Promise((resolve) => { channel.onopen = () => resolve(true); });
    await a.setLocalDescription(await a.createOffer());
    await b.setRemoteDescription(a.localDescription);
    await b.setLocalDescription(await b.createAnswer());
    await a.setRemoteDescription(b.localDescription);
    if (!(await withTimeout(open, RELAY_MS, false))) return { ok: false, rtt: null };
    const times = [];
    for (let i = 0; i < PINGS; i += 1) {
      const sent = performance.now();
      const back = new Promise((resolve) => { channel.onmessage = () => resolve(true); });
      channel.send(String(i));
      if (!(await withTimeout(back, 2000, false))) break;
      times.push(performance.now() - sent);
    }
    times.sort((x, y) => x - y);
    return { ok: true, rtt: times.length ? Math.round(times[Math.floor(times.length / 2)]) : null };
  } finally {
    a.close();
    b.close();
  }
}

function say(key, params) {
  const box = $("network-status");
  if (box) box.textContent = t(key, params);
}

/** Run the check with the ICE servers the presence socket gives; calls done(result) when it has an answer. */
export function checkConnection(presence, done) {
  return runCheck(() => presence.request({ type: "ice" }).then((answer) => answer.servers), done, (result) => {
    if (result.relay === "ok") say(result.rtt_ms === null ? "network_ok" : "network_ok_rtt", { rtt: result.rtt_ms });
    else if (result.relay === "failed") say("network_no_relay");
    else say(result.candidates.length ? "network_ok" : "network_no_relay");
  });
}

/** The standalone device test's check, for someone not in a visit: STUN servers only (no TURN credentials go to
 * an anonymous page), so it finds host and srflx candidates and leaves the relay to the lobby's check. */
export function checkWithoutRelay(stunUrls, done) {
  const servers = stunUrls.length ? [{ urls: stunUrls }] : [];
  return runCheck(() => Promise.resolve(servers), done, (result) => {
    if (!result.candidates.length) say("network_none");
    else if (!servers.length) say("network_at_join");
    else say(result.candidates.indexOf("srflx") >= 0 ? "network_stun_ok" : "network_stun_failed");
  });
}

async function runCheck(getServers, done, report) {
  runs += 1;
  const run = runs;
  view.state = "checking";
  say("network_checking");
  let result = { candidates: [], relay: "not_offered", rtt_ms: null };
  try {
    if (typeof RTCPeerConnection !== "function") throw new Error("no WebRTC");
    const answer = await getServers();
    const servers = Array.isArray(answer) ? answer : [];
    result.candidates = await gather(servers);
    if (hasTurn(servers) && result.candidates.indexOf("relay") < 0) {
      result.relay = "failed"; // the TURN server gave no relay address (unreachable, or refused the credentials)
    } else if (hasTurn(servers)) {
      const relay = await relayRoundTrip(servers);
      result.relay = relay.ok ? "ok" : "failed";
      result.rtt_ms = relay.rtt;
    }
  } catch (err) {
    if (err && (err.code === "connection_lost" || err.code === "not_connected")) {
      if (run === runs) view.state = "idle"; // asked again on the next connection
      return;
    }
    result = { candidates: [], relay: "failed", rtt_ms: null };
  }
  if (run !== runs) return; // a newer check is under way
  view.state = "done";
  view.result = result;
  report(result);
  done(result);
}

/** Whether a check has an answer or is under way (so the lobby starts one only once). */
export function checkStarted() {
  return view.state !== "idle";
}

/** The device test's result for the gateway: devices from the lobby, sound and connection from here. */
export function deviceReport(devices) {
  // "unknown": the check has not finished yet; the lobby sends the result again when it has.
  const found = view.result || { candidates: [], relay: "unknown", rtt_ms: null };
  return { camera: devices.camera, microphone: devices.microphone, speaker: view.heard,
           candidates: found.candidates, relay: found.relay, rtt_ms: found.rtt_ms };
}

/** Whether the patient said they heard the test sound (null: not answered). */
export function heard() {
  return view.heard;
}

/** Ask "did you hear the sound?" once the tone has played; the answer is kept for deviceReport, and given to
 * onAnswer when there is one. */
export function askHeard(onAnswer) {
  const box = $("speaker-answer");
  if (!box) return;
  box.hidden = false;
  ["speaker-yes", "speaker-no"].forEach((id) => {
    const button = $(id);
    button.onclick = () => {
      view.heard = id === "speaker-yes";
      $("speaker-yes").setAttribute("aria-pressed", String(view.heard));
      $("speaker-no").setAttribute("aria-pressed", String(!view.heard));
      $("speaker-status").textContent = t(view.heard ? "speaker_ok" : "speaker_not_heard");
      if (onAnswer) onAnswer(view.heard);
    };
  });
}
