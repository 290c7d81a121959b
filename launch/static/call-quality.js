/* Call quality in the video room: each connection's round-trip time, packet loss and incoming bitrate, read
 * from RTCPeerConnection.getStats() every few seconds.
 *
 * The clinician's room shows each participant's connection as a simple indicator on their tile (good, fair or
 * poor; the numbers in a tooltip and in visually hidden text for screen readers). Every room page sends the
 * gateway a sample of its own connections about every 30 s (the worst of them: round-trip time and loss only),
 * which the gateway counts into the visit's per-role quality summary (presence/quality.py).
 *
 * Tests read window.visitgateQuality: {peers: {participant: {rtt_ms, loss_pct, kbps, level, local}},
 * samplesSent, sampleNow()}.
 */
import { t } from "./i18n.js";

const POLL_MS = 2000;
const SAMPLE_MS = 30000;
const GOOD = { rtt: 150, loss: 2 };   // under both: good
const POOR = { rtt: 400, loss: 8 };   // either this much or more: poor

/** The level a measurement shows as: "good", "fair", "poor", or "unknown" before anything is measured. */
export function level(rttMs, lossPct) {
  if (rttMs === null && lossPct === null) return "unknown";
  const rtt = rttMs === null ? 0 : rttMs;
  const loss = lossPct === null ? 0 : lossPct;
  if (rtt >= POOR.rtt || loss >= POOR.loss) return "poor";
  if (rtt < GOOD.rtt && loss < GOOD.loss) return "good";
  return "fair";
}

/** One reading of a connection's stats; `last` is the previous reading (for loss and bitrate over the gap). */
async function measure(pc, last) {
  const report = await pc.getStats();
  let pair = null;
  let transport = null;
  report.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) transport = s; });
  if (transport) pair = report.get(transport.selectedCandidatePairId) || null;
  if (!pair) report.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
  let lost = 0;
  let received = 0;
  let bytes = 0;
  report.forEach((s) => {
    if (s.type === "inbound-rtp") {
      lost += Math.max(0, s.packetsLost || 0);
      received += s.packetsReceived || 0;
      bytes += s.bytesReceived || 0;
    }
  });
  const local = pair && report.get(pair.localCandidateId);
  const now = performance.now();
  const reading = {
    at: now, lost, received, bytes,
    rtt_ms: pair && typeof pair.currentRoundTripTime === "number" ? Math.round(pair.currentRoundTripTime * 1000) : null,
    local: local ? local.candidateType : null,
    loss_pct: null, kbps: null,
  };
  if (last) {
    const dl = lost - last.lost;
    const dr = received - last.received;
    if (dl + dr > 0) reading.loss_pct = Math.round((1000 * Math.max(0, dl)) / (dl + dr)) / 10;
    const seconds = (now - last.at) / 1000;
    if (seconds > 0) reading.kbps = Math.max(0, Math.round(((bytes - last.bytes) * 8) / 1000 / seconds));
  }
  return reading;
}

function numbers(r) {
  const dash = "–";
  return t("quality.numbers", {
    rtt: r.rtt_ms === null ? dash : r.rtt_ms, loss: r.loss_pct === null ? dash : r.loss_pct,
    kbps: r.kbps === null ? dash : r.kbps });
}

function show(tile, r) {
  let badge = tile.querySelector(".quality");
  if (!badge) {
    badge = document.createElement("p");
    badge.className = "quality";
    const word = document.createElement("span");
    word.className = "quality-level";
    const hidden = document.createElement("span");
    hidden.className = "visually-hidden";
    badge.appendChild(word);
    badge.appendChild(hidden);
    tile.appendChild(badge);
  }
  badge.dataset.level = r.level;
  const text = numbers(r);
  badge.title = text;
  badge.querySelector(".quality-level").textContent = t("quality." + r.level);
  badge.querySelector(".visually-hidden").textContent = " " + text;
}

/**
 * Watch the room's connections. options: peers() -> Map(participant -> {pc, tile}); show (indicators on the
 * tiles: the clinician's room); send(frame) (to the presence socket; false when not sent).
 */
export function watchCallQuality(options) {
  const readings = new Map(); // participant -> {pc, reading}
  const view = { peers: {}, samplesSent: 0, sampleNow: () => sample() };
  window.visitgateQuality = view;

  function sample() {
    // This page's connections in one sample: the worst of them, which is what a participant notices.
    let rtt = null;
    let loss = null;
    readings.forEach(({ reading }) => {
      if (reading.rtt_ms !== null) rtt = Math.max(rtt === null ? 0 : rtt, reading.rtt_ms);
      if (reading.loss_pct !== null) loss = Math.max(loss === null ? 0 : loss, reading.loss_pct);
    });
    if (rtt === null && loss === null) return false;
    if (options.send({ type: "quality", rtt_ms: rtt, loss_pct: loss }) === false) return false;
    view.samplesSent += 1;
    return true;
  }

  let busy = false; // a slow getStats never piles up readings

  async function poll() {
    if (busy) return;
    busy = true;
    try {
      await pollPeers();
    } finally {
      busy = false;
    }
  }

  async function pollPeers() {
    const peers = options.peers();
    readings.forEach((_, p) => { if (!peers.has(p)) { readings.delete(p); delete view.peers[p]; } });
    for (const [p, peer] of peers) {
      if (peer.pc.connectionState !== "connected") continue;
      const known = readings.get(p);
      const last = known && known.pc === peer.pc ? known.reading : null;
      let reading;
      try {
        reading = await measure(peer.pc, last);
      } catch (err) {
        continue; // closed meanwhile
      }
      reading.level = level(reading.rtt_ms, reading.loss_pct);
      readings.set(p, { pc: peer.pc, reading });
      view.peers[p] = { rtt_ms: reading.rtt_ms, loss_pct: reading.loss_pct, kbps: reading.kbps,
                        level: reading.level, local: reading.local };
      if (options.show && peer.tile && peer.tile.isConnected) show(peer.tile, reading);
    }
  }

  setInterval(poll, POLL_MS);
  setInterval(sample, SAMPLE_MS);
  return view;
}
