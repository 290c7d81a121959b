/* The built-in video room (launch/templates/room.html): a WebRTC mesh of at most four browsers.
 *
 * Signalling rides on the presence websocket (docs/presence-protocol.md): `signal` frames go to one
 * participant, and presence events say who is connected, admitted or removed. Each join of this page has a
 * random `session`; every signal carries it (and the session it is meant for), so a rejoin or a second tab
 * is never confused with the connection it replaces.
 *
 * Who connects to whom: whoever learns that another participant is connected (from the snapshot or a live
 * `connected` event) says `hello`; room pages answer `welcome`, other pages (the provider view) ignore both.
 * The one with the smaller participant id is the offerer: it owns the connection, names it (`pc`), and makes
 * the offer; the other only asks for one (`want`) and always follows the newest offer. So two offers never
 * cross (no glare), and after any loss on either side the two converge on one connection. ICE candidates
 * trickle in small batches, to stay well under the socket's frame rate limit.
 *
 * TURN credentials expire, and a relay allocation cannot be refreshed with expired ones: when fresh ICE
 * servers arrive, each connection takes them and restarts ICE on the same connection (the offerer offers
 * with iceRestart; the answerer asks it to with `restart`), so a long call keeps its relay without a gap.
 *
 * The socket is the one presence client (presence-client.js): it authenticates, resumes after the last event
 * seen across reconnects and rejoins, and backs off with jitter; this page reacts to what it delivers.
 *
 * Tests read window.visitgateRoom: {status, socket, joined, audioEnabled, videoEnabled, iceRefreshes,
 * peers: {participant: {connectionState, framesDecoded, iceRestarts, restartsAsked, ufrags}}}.
 */
import { announce } from "./announce.js";
import { t } from "./i18n.js";
import { PresenceClient } from "./presence-client.js";
import * as visitEnd from "./visit-end.js";
import * as providerHandle from "./provider-handle.js";
import { WaitingList } from "./waiting.js";
import { watchCallQuality } from "./call-quality.js";

{
  var config = JSON.parse(document.getElementById("room-config").textContent);
  var me = config.participant;
  // The clinician's handle is renewed while the page is open (provider-handle.js): reconnect with the new one.
  if (config.auth.provider) {
    providerHandle.onChange(function (fresh) { config.auth.provider = fresh; });
  }
  var MAX_OTHERS = Math.max(1, (config.room_size || 4) - 1);
  var GONE_GRACE_MS = 1500;   // a "disconnected" may overtake the new socket's "connected" on a reload
  var STATS_MS = 1000;
  var CANDIDATE_BATCH_MS = 60;
  var HELLO_WAIT_MS = 5000;   // a hello from someone whose events have not arrived yet waits this long
  var MAX_RETRIES = 3;        // fresh connections tried after a failed one, per participant
  var SETUP_LIMIT_MS = 15000; // a connection not up by then is started afresh
  var OFFER_FRESH_MS = 3000;  // a "want" that crossed our recent offer does not restart it
  var ADMISSION = { admitted: true, denied: true, removed: true };

  var view = {
    participant: me, role: config.role, status: "connecting", socket: "closed", joined: false,
    audioEnabled: true, videoEnabled: true, peers: {}, lastEventId: null, iceRefreshes: 0,
  };
  window.visitgateRoom = view;

  function $(id) { return document.getElementById(id); }

  var stream = null;          // our camera and microphone
  var session = null;         // this join's id; null while not joined
  var subscribed = false;
  var finished = false;       // the session or the visit ended: nothing more to do here
  var peers = new Map();      // participant -> peer
  var sockets = new Map();    // participant -> open sockets, counted from connected/disconnected events
  var roles = new Map();
  var guestKinds = new Map();
  var admission = new Map();  // participant -> admitted | denied | removed
  var names = new Map();
  var waiting = new Map();    // participant -> hello held until their events arrive
  var goneTimers = new Map();
  var retries = new Map();
  // TURN credentials expire (config.ice_ttl seconds after the page was served): fresh ones are asked for
  // over the socket at four fifths of their life, so a connection started late in a long visit (a rejoin,
  // a recovery) can still be relayed.
  var iceDueAt = config.ice_ttl ? Date.now() + config.ice_ttl * 800 : null;
  var iceTimer = null;
  // The clinician sees who waits (and can admit them, and write to them) without leaving the room: waiting.js.
  var knocks = config.role === "provider" ? new WaitingList({
    request: function (frame) { return presence.request(frame); }, list: $("waiting-list"),
    empty: $("waiting-empty"), notice: $("waiting-notice"),
  }) : null;
  if (knocks) knocks.setSelf(me);

  // ---- status and controls -------------------------------------------------------------------------

  function setStatus(key) {
    view.status = key;
    $("room-status").textContent = t(key);
  }

  function notice(key) {
    var el = $("room-notice");
    el.textContent = key ? t(key, { size: config.room_size || 4 }) : "";
    el.hidden = !key;
  }

  function callStatus() {
    if (!view.joined || finished) return;
    if (view.socket !== "open") return;
    setStatus(peers.size ? "in_call" : "waiting_for_others");
  }

  function updateControls() {
    var hasAudio = !!(stream && stream.getAudioTracks().length);
    var hasVideo = !!(stream && stream.getVideoTracks().length);
    var mute = $("room-mute");
    var camera = $("room-camera");
    mute.textContent = view.audioEnabled ? t("mute") : t("unmute");
    mute.setAttribute("aria-pressed", String(!view.audioEnabled));
    mute.disabled = !hasAudio || !view.joined;
    camera.textContent = view.videoEnabled ? t("camera_off") : t("camera_on");
    camera.setAttribute("aria-pressed", String(!view.videoEnabled));
    camera.disabled = !hasVideo || !view.joined;
    $("room-leave").hidden = !view.joined || finished;
    $("room-rejoin").hidden = view.joined || finished;
    mute.hidden = camera.hidden = finished;
    var local = $("room-local");
    local.hidden = !hasVideo || !view.joined;
    local.classList.toggle("off", !view.videoEnabled);
  }

  // ---- camera and microphone -----------------------------------------------------------------------

  async function startMedia() {
    if (stream) return;
    var devices = navigator.mediaDevices;
    if (!devices || !devices.getUserMedia) { notice("no_media"); return; }
    var video = { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "user" };
    try {
      stream = await devices.getUserMedia({ audio: true, video: video });
      notice(null);
    } catch (err) {
      try {
        stream = await devices.getUserMedia({ audio: true });
        notice("audio_only");
      } catch (err2) {
        stream = null;
        notice("no_devices");
      }
    }
    if (stream) {
      stream.getAudioTracks().forEach(function (tr) { tr.enabled = view.audioEnabled; });
      stream.getVideoTracks().forEach(function (tr) { tr.enabled = view.videoEnabled; });
      $("room-local").srcObject = stream;
    }
  }

  function stopMedia() {
    if (stream) stream.getTracks().forEach(function (tr) { tr.stop(); });
    stream = null;
    $("room-local").srcObject = null;
  }

  function setAudio(enabled) {
    view.audioEnabled = enabled;
    if (stream) stream.getAudioTracks().forEach(function (tr) { tr.enabled = enabled; });
    updateControls();
  }

  function setVideo(enabled) {
    // A disabled track keeps its place in the connection and sends black frames: no renegotiation.
    view.videoEnabled = enabled;
    if (stream) stream.getVideoTracks().forEach(function (tr) { tr.enabled = enabled; });
    updateControls();
  }

  // ---- the socket ----------------------------------------------------------------------------------

  var presence = new PresenceClient({
    url: config.ws,
    baseDelayMs: 250,
    maxDelayMs: 15000,
    auth: function () { return Object.assign({}, config.auth); },
    onStatus: function (state, detail) {
      view.socket = state === "open" ? "open" : (state === "connecting" || state === "reconnecting") ? "connecting"
        : "closed";
      if (state !== "open") subscribed = false;
      // The peers keep their media flowing while the socket is away.
      if (state === "reconnecting" && view.joined && !finished) {
        setStatus(detail.attempt > 4 ? "connection_failed" : "reconnecting");
      }
    },
    onAuthenticated: function () { scheduleIceRefresh(); },
    onSnapshot: function (events, frame) {
      if (knocks) knocks.snapshot(events, frame);
      events.forEach(applyEvent);
      var shown = frame.display_names && typeof frame.display_names === "object" ? frame.display_names : {};
      Object.keys(shown).forEach(function (p) { setName(p, shown[p]); });
    },
    onEvent: function (e) {
      applyEvent(e);
      if (knocks) knocks.event(e);
    },
    onSynced: function () {
      if (knocks) knocks.synced();
      view.lastEventId = presence.lastEventId;
      onSubscribed();
    },
    onFrame: onFrame,
    onEnded: function () { end("session_ended"); },
  });

  function send(frame) {
    return presence.send(frame);
  }

  // Each connection's quality: an indicator per participant for the clinician, samples for the visit's summary.
  watchCallQuality({ peers: function () { return peers; }, show: config.role === "provider",
                     send: function (frame) { return view.joined && presence.ready && send(frame); } });

  function connect() {
    subscribed = false;
    presence.start();  // after a rejoin too, it resumes after the last event seen: nothing lost or repeated
  }

  function closeSocket() {
    subscribed = false;
    presence.stop(1000, "left");
  }

  function onFrame(frame) {
    if (knocks) knocks.frame(frame);
    switch (frame.type) {
      case "display_name":
        setName(frame.participant, frame.display_name);
        break;
      case "ice":
        if (Array.isArray(frame.servers)) {
          config.ice_servers = frame.servers;  // every connection opened from now on uses them
          view.iceRefreshes += 1;
          peers.forEach(renewIce);             // and the open ones move to them
          iceDueAt = Date.now() + config.ice_ttl * 800;
          scheduleIceRefresh();
        }
        break;
      case "signal":
        if (typeof frame.from === "string") onSignal(frame.from, frame.data);
        break;
    }
  }

  function scheduleIceRefresh() {
    if (iceDueAt === null) return;
    clearTimeout(iceTimer);
    iceTimer = setTimeout(function () {
      if (presence.ready) send({ type: "ice" });  // else the next auth_ok asks again
    }, Math.max(0, iceDueAt - Date.now()));
  }

  function onSubscribed() {
    subscribed = true;
    if (finished || !view.joined) return;
    checkSelf();
    if (finished) return;
    callStatus();
    // Say hello to everyone who may be in the room; room pages answer, other pages ignore it.
    sockets.forEach(function (count, p) {
      if (count > 0 && p !== me && allowed(p)) hello(p);
    });
  }

  // ---- presence events -----------------------------------------------------------------------------

  function applyEvent(e) {
    view.lastEventId = e.id;
    if (e.kind === "visit_ended") { visitEnd.watch(e); end("visit_ended"); return; }
    var p = e.participant;
    if (!p) return;
    if (e.role) roles.set(p, e.role);
    if (e.guest_kind) guestKinds.set(p, e.guest_kind);
    if (ADMISSION[e.kind]) admission.set(p, e.kind);
    if (p === me) {
      if (subscribed) checkSelf();
      return;
    }
    if (e.kind === "connected") {
      sockets.set(p, (sockets.get(p) || 0) + 1);
      cancelGone(p);
      // Their page may have subscribed before our "connected" was published, and so not know of us.
      if (subscribed && view.joined && allowed(p)) hello(p);
    } else if (e.kind === "disconnected") {
      var left = Math.max(0, (sockets.get(p) || 0) - 1);
      sockets.set(p, left);
      if (left === 0) scheduleGone(p);
    } else if (e.kind === "removed" || e.kind === "denied") {
      closePeer(p);
    }
    if (waiting.has(p)) {
      var held = waiting.get(p);
      waiting.delete(p);
      onSignal(p, held);
    }
    labelTile(p);
  }

  function checkSelf() {
    if (config.role === "provider" || finished) return;
    var state = admission.get(me);
    if (state === "removed" || state === "denied") {
      end("removed");
      if (config.lobby_url) window.location.assign(config.lobby_url);
    }
  }

  function allowed(p) {
    // Providers, and patients or guests the clinician admitted; undefined while we know nothing of p.
    var role = roles.get(p);
    if (role === undefined) return undefined;
    return role === "provider" || admission.get(p) === "admitted";
  }

  function scheduleGone(p) {
    if (!peers.has(p) || goneTimers.has(p)) return;
    goneTimers.set(p, setTimeout(function () {
      goneTimers.delete(p);
      if (!(sockets.get(p) > 0)) closePeer(p);
    }, GONE_GRACE_MS));
  }

  function cancelGone(p) {
    clearTimeout(goneTimers.get(p));
    goneTimers.delete(p);
  }

  // ---- signalling ----------------------------------------------------------------------------------

  function sendSignal(to, data, toSession) {
    if (!session) return;
    data.app = "vg-room";
    data.session = session;
    if (toSession) data.to = toSession;
    send({ type: "signal", to: to, data: data });
  }

  function isOfferer(p) { return me < p; }

  function hello(p) {
    // The answerer says whether it needs an offer; the offerer's hello just asks for a welcome.
    sendSignal(p, isOfferer(p) ? { kind: "hello" } : { kind: "hello", want: !hasLive(p, null) }, null);
  }

  function hasLive(p, remoteSession) {
    var peer = peers.get(p);
    return !!peer && (remoteSession === null || peer.remoteSession === remoteSession) && isUp(peer);
  }

  function onSignal(from, data) {
    if (!data || data.app !== "vg-room" || from === me || !view.joined || !session || finished) return;
    if (data.to && data.to !== session) return; // meant for another join of ours (an earlier one, another tab)
    if (typeof data.session !== "string") return;
    var verdict = allowed(from);
    if (verdict === undefined) {
      if (data.kind === "hello" || data.kind === "welcome") {
        waiting.set(from, data);
        setTimeout(function () { if (waiting.get(from) === data) waiting.delete(from); }, HELLO_WAIT_MS);
      }
      return;
    }
    if (!verdict) return;
    var peer = peers.get(from);
    var ours = !!peer && typeof data.pc === "string" && peer.pcid === data.pc;
    switch (data.kind) {
      case "hello":
      case "welcome":
        if (isOfferer(from)) {
          if (data.kind === "hello") sendSignal(from, { kind: "welcome" }, data.session);
          var fresh = !!peer && peer.remoteSession === data.session && isUp(peer) &&
            Date.now() - peer.createdAt < OFFER_FRESH_MS;
          if (!hasLive(from, data.session) || (data.want && !fresh)) startConnection(from, data.session);
        } else if (data.kind === "hello") {
          sendSignal(from, { kind: "welcome", want: !hasLive(from, data.session) }, data.session);
        }
        return;
      case "offer":
        if (isOfferer(from) || typeof data.pc !== "string") return;
        if (ours) { if (data.restart) acceptRestart(peer, data.sdp); return; }
        if (peer) closePeer(from);
        else if (peers.size >= MAX_OTHERS) { sendSignal(from, { kind: "full" }, data.session); return; }
        acceptOffer(openPeer(from, data.session, data.pc), data.sdp);
        return;
      case "answer":
        if (ours && isOfferer(from)) acceptAnswer(peer, data.sdp);
        return;
      case "restart":
        // The answerer took fresh servers: restart so its new candidates are gathered with them.
        if (ours && isOfferer(from)) { peer.stats.restartsAsked += 1; restartIce(peer); }
        return;
      case "candidates":
        if (ours && Array.isArray(data.candidates)) data.candidates.forEach(function (c) { addCandidate(peer, c); });
        return;
      case "bye":
        if (peer && (ours || peer.remoteSession === data.session)) closePeer(from);
        return;
      case "full":
        if (!peers.size) notice("room_full");
        return;
    }
  }

  // ---- peer connections ----------------------------------------------------------------------------

  function isUp(peer) {
    var s = peer.pc.connectionState;
    return s !== "failed" && s !== "closed";
  }

  function newId() {
    var bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, function (b) { return b.toString(16).padStart(2, "0"); }).join("");
  }

  function startConnection(p, remoteSession) {
    if (!peers.has(p) && peers.size >= MAX_OTHERS) { sendSignal(p, { kind: "full" }, remoteSession); return; }
    closePeer(p);
    makeOffer(openPeer(p, remoteSession, newId()));
  }

  function openPeer(p, remoteSession, pcid) {
    var pc = new RTCPeerConnection({ iceServers: config.ice_servers || [],
                                     iceTransportPolicy: config.ice_transport_policy === "relay" ? "relay" : "all" });
    var peer = {
      id: p, pc: pc, pcid: pcid, remoteSession: remoteSession, offerer: isOfferer(p), createdAt: Date.now(),
      remoteSet: false, pendingRemote: [], outgoing: [], flushTimer: null, setupTimer: null, tile: makeTile(p),
      stats: { connectionState: pc.connectionState, framesDecoded: 0, iceRestarts: 0, restartsAsked: 0, ufrags: [] },
    };
    peers.set(p, peer);
    view.peers[p] = peer.stats;
    layout();
    if (peer.offerer) attachLocal(peer);
    peer.setupTimer = setTimeout(function () {
      if (peers.get(p) === peer && pc.connectionState !== "connected") recover(peer);
    }, SETUP_LIMIT_MS);
    pc.onicecandidate = function (ev) {
      if (!ev.candidate || peers.get(p) !== peer) return;
      peer.outgoing.push(ev.candidate.toJSON());
      if (!peer.flushTimer) peer.flushTimer = setTimeout(function () { flushCandidates(peer); }, CANDIDATE_BATCH_MS);
    };
    pc.ontrack = function (ev) {
      if (peers.get(p) !== peer) return;
      var video = peer.tile.querySelector("video");
      var remote = ev.streams && ev.streams[0];
      if (!remote) {
        remote = video.srcObject || new MediaStream();
        remote.addTrack(ev.track);
      }
      if (video.srcObject !== remote) video.srcObject = remote;
      play(video);
    };
    pc.onconnectionstatechange = function () {
      if (peers.get(p) !== peer) return;
      peer.stats.connectionState = pc.connectionState;
      peer.tile.dataset.state = pc.connectionState;
      labelTile(p);
      if (pc.connectionState === "connected") {
        retries.delete(p);
        clearTimeout(peer.setupTimer);
        // The clinician's arrival is said aloud to the patient or guest, once per connection.
        if (!peer.announced && roles.get(p) === "provider" && config.role !== "provider") {
          peer.announced = true;
          announce(t("provider_joined"));
        }
      }
      if (pc.connectionState === "failed") recover(peer);
    };
    labelTile(p);
    callStatus();
    return peer;
  }

  function attachLocal(peer) {
    // Tracks we have are sent; for a kind we lack (no camera) we still ask to receive the other's.
    ["audio", "video"].forEach(function (kind) {
      var track = stream && (kind === "audio" ? stream.getAudioTracks()[0] : stream.getVideoTracks()[0]);
      if (track) peer.pc.addTrack(track, stream);
      else if (peer.offerer) peer.pc.addTransceiver(kind, { direction: "recvonly" });
    });
  }

  function signalPeer(peer, data) {
    data.pc = peer.pcid;
    sendSignal(peer.id, data, peer.remoteSession);
  }

  async function makeOffer(peer) {
    try {
      await peer.pc.setLocalDescription(await peer.pc.createOffer());
      if (peers.get(peer.id) !== peer) return;
      noteUfrag(peer);
      signalPeer(peer, { kind: "offer", sdp: peer.pc.localDescription.sdp });
    } catch (err) {
      console.warn("room: could not make an offer", err);
    }
  }

  async function acceptOffer(peer, sdp) {
    try {
      await peer.pc.setRemoteDescription({ type: "offer", sdp: sdp });
      remoteSet(peer);
      attachLocal(peer); // addTrack takes over the transceivers the offer created
      await peer.pc.setLocalDescription(await peer.pc.createAnswer());
      if (peers.get(peer.id) !== peer) return;
      noteUfrag(peer);
      signalPeer(peer, { kind: "answer", sdp: peer.pc.localDescription.sdp });
    } catch (err) {
      console.warn("room: could not answer an offer", err);
    }
  }

  async function acceptAnswer(peer, sdp) {
    if (peer.pc.signalingState !== "have-local-offer") return;
    try {
      await peer.pc.setRemoteDescription({ type: "answer", sdp: sdp });
      remoteSet(peer);
      if (peer.restarting) { peer.restarting = false; peer.stats.iceRestarts += 1; }
    } catch (err) {
      console.warn("room: could not take an answer", err);
    }
  }

  function noteUfrag(peer) {
    // For tests and diagnosis: the ICE username fragment of each local description (a restart changes it).
    var found = /a=ice-ufrag:(\S+)/.exec(peer.pc.localDescription ? peer.pc.localDescription.sdp : "");
    var seen = peer.stats.ufrags;
    if (found && seen[seen.length - 1] !== found[1]) seen.push(found[1]);
  }

  function renewIce(peer) {
    // New TURN credentials: this connection's next candidates use them; the offerer restarts ICE now, the
    // answerer asks it to (only the offerer ever offers, so two offers never cross).
    try {
      peer.pc.setConfiguration(Object.assign(peer.pc.getConfiguration(), { iceServers: config.ice_servers || [] }));
    } catch (err) {
      console.warn("room: could not take the new ICE servers", err);
      return;
    }
    if (!peer.remoteSet || !isUp(peer)) return;  // not up yet: it is gathering with the new servers anyway
    if (peer.offerer) restartIce(peer);
    else signalPeer(peer, { kind: "restart" });
  }

  async function restartIce(peer) {
    if (peer.pc.signalingState !== "stable") return;  // an offer is under way: it carries the new servers
    try {
      await peer.pc.setLocalDescription(await peer.pc.createOffer({ iceRestart: true }));
      if (peers.get(peer.id) !== peer) return;
      noteUfrag(peer);
      peer.restarting = true;
      signalPeer(peer, { kind: "offer", restart: true, sdp: peer.pc.localDescription.sdp });
    } catch (err) {
      console.warn("room: could not restart ICE", err);
    }
  }

  async function acceptRestart(peer, sdp) {
    // The same connection, new ICE credentials: answer on it, keeping its tracks as they are.
    try {
      await peer.pc.setRemoteDescription({ type: "offer", sdp: sdp });
      await peer.pc.setLocalDescription(await peer.pc.createAnswer());
      if (peers.get(peer.id) !== peer) return;
      noteUfrag(peer);
      peer.stats.iceRestarts += 1;
      signalPeer(peer, { kind: "answer", sdp: peer.pc.localDescription.sdp });
    } catch (err) {
      console.warn("room: could not answer an ICE restart", err);
    }
  }

  function remoteSet(peer) {
    peer.remoteSet = true;
    var pending = peer.pendingRemote;
    peer.pendingRemote = [];
    pending.forEach(function (c) { addCandidate(peer, c); });
  }

  function addCandidate(peer, candidate) {
    if (!peer.remoteSet) { peer.pendingRemote.push(candidate); return; }
    peer.pc.addIceCandidate(candidate).catch(function (err) { console.warn("room: bad ICE candidate", err); });
  }

  function flushCandidates(peer) {
    peer.flushTimer = null;
    if (!peer.outgoing.length || peers.get(peer.id) !== peer) return;
    signalPeer(peer, { kind: "candidates", candidates: peer.outgoing.splice(0, 10) });
    if (peer.outgoing.length) peer.flushTimer = setTimeout(function () { flushCandidates(peer); }, CANDIDATE_BATCH_MS);
  }

  function recover(peer) {
    // A failed or stuck connection: start afresh a few times (the offerer offers, the answerer asks).
    var p = peer.id;
    var remoteSession = peer.remoteSession;
    closePeer(p);
    var tries = (retries.get(p) || 0) + 1;
    retries.set(p, tries);
    if (tries > MAX_RETRIES) return;
    setTimeout(function () {
      if (!view.joined || finished || peers.has(p) || !(sockets.get(p) > 0) || !allowed(p)) return;
      if (isOfferer(p)) startConnection(p, remoteSession);
      else sendSignal(p, { kind: "hello", want: true }, null);
    }, 500 * tries);
  }

  function closePeer(p) {
    var peer = peers.get(p);
    cancelGone(p);
    if (!peer) return;
    peers.delete(p);
    delete view.peers[p];
    clearTimeout(peer.flushTimer);
    clearTimeout(peer.setupTimer);
    peer.pc.onicecandidate = peer.pc.ontrack = peer.pc.onconnectionstatechange = null;
    peer.pc.close();
    var video = peer.tile.querySelector("video");
    video.srcObject = null;
    peer.tile.remove();
    layout();
    callStatus();
  }

  // ---- tiles ---------------------------------------------------------------------------------------

  function makeTile(p) {
    var figure = document.createElement("figure");
    figure.className = "room-tile";
    figure.dataset.participant = p;
    figure.dataset.state = "new";
    var video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    var caption = document.createElement("figcaption");
    figure.appendChild(video);
    figure.appendChild(caption);
    $("room-tiles").appendChild(figure);
    return figure;
  }

  function layout() {
    $("room-tiles").dataset.count = String(peers.size);
  }

  function setName(p, name) {
    if (typeof p !== "string" || typeof name !== "string") return;
    names.set(p, name);
    labelTile(p);
  }

  function labelTile(p) {
    var peer = peers.get(p);
    if (!peer) return;
    var name = names.get(p) || t(guestKinds.get(p) || roles.get(p) || "guest");
    var state = peer.pc.connectionState;
    var suffix = state === "connected" ? "" : (state === "failed" || state === "disconnected")
      ? " · " + t("peer_trouble") : " · " + t("peer_connecting");
    peer.tile.querySelector("figcaption").textContent = name + suffix;
  }

  function play(video) {
    var started = video.play();
    if (!started || !started.catch) return;
    started.catch(function () {
      // Autoplay with sound was refused until the user touches the page: play muted, offer sound.
      video.muted = true;
      video.play().catch(function () {});
      $("room-sound").hidden = false;
    });
  }

  function soundOn() {
    $("room-sound").hidden = true;
    document.querySelectorAll(".room-tile video").forEach(function (video) {
      video.muted = false;
      video.play().catch(function () {});
    });
  }

  // ---- stats for the tests and the tiles -----------------------------------------------------------

  async function pollStats() {
    var all = Array.from(peers.values());
    for (var i = 0; i < all.length; i++) {
      var peer = all[i];
      try {
        var report = await peer.pc.getStats();
        var frames = 0;
        report.forEach(function (s) {
          if (s.type === "inbound-rtp" && s.kind === "video" && typeof s.framesDecoded === "number") frames += s.framesDecoded;
        });
        peer.stats.framesDecoded = frames;
        peer.stats.connectionState = peer.pc.connectionState;
      } catch (err) { /* closed meanwhile */ }
    }
  }

  // ---- joining and leaving -------------------------------------------------------------------------

  async function join() {
    if (view.joined || finished) return;
    session = newId();
    view.joined = true;
    notice(null);
    setStatus("connecting");
    updateControls();
    await startMedia();
    updateControls();
    if (!view.joined || finished) { stopMedia(); return; }
    connect();
  }

  function sayBye() {
    peers.forEach(function (peer) { signalPeer(peer, { kind: "bye" }); });
  }

  function leave() {
    if (!view.joined) return;
    sayBye();
    Array.from(peers.keys()).forEach(closePeer);
    waiting.clear();
    view.joined = false;
    session = null;
    closeSocket(); // the bye frames go first: a close is sent after what is already queued
    stopMedia();
    setStatus("left");
    updateControls();
    $("room-rejoin").focus(); // the Leave button just pressed is gone; Rejoin took its place
  }

  function end(reason) {
    if (finished) return;
    if (reason === "session_ended" && config.role === "provider") reason = "provider_session_ended";
    if (view.joined) sayBye();
    finished = true;
    Array.from(peers.keys()).forEach(closePeer);
    view.joined = false;
    session = null;
    closeSocket();
    stopMedia();
    setStatus(reason);
    updateControls();
  }

  $("room-mute").addEventListener("click", function () { setAudio(!view.audioEnabled); });
  $("room-camera").addEventListener("click", function () { setVideo(!view.videoEnabled); });
  $("room-leave").addEventListener("click", leave);
  $("room-rejoin").addEventListener("click", function () {
    join();
    $("room-leave").focus(); // Rejoin, just pressed, is gone; Leave took its place
  });
  $("room-sound").addEventListener("click", soundOn);
  window.addEventListener("pagehide", function () { if (view.joined) sayBye(); });
  setInterval(pollStats, STATS_MS);
  if (config.role === "provider") visitEnd.endVisitButton(presence);
  join();
}
