// The provider view's live participant list: who is waiting, since when, admit / deny / remove.
// Talks to /ws through the one presence client (presence-client.js), which resumes by event id after a
// reconnect; what the gateway refuses is said in #presence-notice.
import { t, time } from "./i18n.js";
import { PresenceClient } from "./presence-client.js";
import * as providerHandle from "./provider-handle.js";

const list = document.getElementById("participant-list");
const empty = document.getElementById("participants-empty");
const status = document.getElementById("presence-status");
const notice = document.getElementById("presence-notice");
const alertBox = document.getElementById("waiting-alert");
const fullBox = document.getElementById("room-full");
const section = document.getElementById("participants");
// The video room is a mesh: past this many people every browser would carry too many streams, so the
// room pages turn the next one away. Say so here, before the clinician admits someone into a full room.
const roomSize = Number(section && section.dataset.roomSize) || 4;

const people = {};        // participant id -> {role, guestKind, state, since, device, lobbies, rooms}
const names = {};
let self = null;
let live = false;         // the first snapshot is in: from here on a knock is news
let audio = null;

function knock() {
  // Two short tones; browsers may refuse audio before a click in the page, which is fine: the alert shows.
  try {
    audio = audio || new (window.AudioContext || window.webkitAudioContext)();
    [0, 0.25].forEach((offset) => {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.frequency.value = 660;
      gain.gain.value = 0.2;
      osc.connect(gain).connect(audio.destination);
      osc.start(audio.currentTime + offset);
      osc.stop(audio.currentTime + offset + 0.12);
    });
  } catch (e) { /* no audio available */ }
}

function apply(event) {
  if (!event.participant || event.participant === self) { return; }
  const p = people[event.participant] || (people[event.participant] = {
    role: event.role, guestKind: event.guest_kind, state: "new", since: event.at, device: null,
    lobbies: 0, rooms: 0});
  // Sockets are counted: a reload opens the new one before the old one's close may be written, and the
  // sockets of a gateway process that died are closed for it later (so after their successors opened).
  switch (event.kind) {
    case "lobby_entered":
      p.lobbies += 1;
      // Back after leaving the lobby (a reload, a dropped network, another device): the same wait goes on.
      if (p.state === "left") { p.since = p.waited; } else if (p.state !== "waiting") { p.since = event.at; }
      p.waited = p.since;
      p.state = "waiting";
      if (live) { knock(); }
      break;
    case "device_test_passed": p.device = "passed"; break;
    case "device_test_failed": p.device = "failed"; break;
    case "admitted": p.state = "admitted"; p.since = event.at; break;
    case "denied": p.state = "denied"; p.since = event.at; break;
    case "connected":
      p.rooms += 1;
      if (p.rooms === 1) { p.state = (p.role === "provider" ? "online" : "in_visit"); p.since = event.at; }
      break;
    case "disconnected":
      p.rooms = Math.max(0, p.rooms - 1);
      if (p.rooms === 0) { p.state = "disconnected"; p.since = event.at; }
      break;
    case "left":
      p.lobbies = Math.max(0, p.lobbies - 1);
      if (p.lobbies === 0 && p.state === "waiting") { p.state = "left"; p.since = event.at; }
      break;
    case "removed": p.state = "removed"; p.since = event.at; break;
  }
}

function label(id, p) {
  const role = ["patient", "guest", "provider"].indexOf(p.role) >= 0 ? p.role : "other";
  let text = t("role." + role);
  if (p.role === "guest" && p.guestKind) {
    const kind = "guest." + p.guestKind;
    text = t("who.guest_kind", { role: text, kind: t(kind) === kind ? p.guestKind : t(kind) });
  }
  if (names[id]) { text = t("who.named", { who: text, name: names[id] }); }
  return text;
}

function describe(p) {
  const at = { time: time(p.since) };
  if (p.state === "waiting") {
    return t(p.device === "passed" ? "state.devices_ok" : p.device === "failed" ? "state.device_problem"
      : "state.waiting", at);
  }
  return p.state === "new" ? "" : t("state." + p.state, at);
}

// Who holds (or is about to take) a place in the video room: this clinician, and every patient or guest
// admitted or connected. Other clinicians' "online" may be this page only, so they are not counted.
function occupancy() {
  let taken = 1;
  Object.keys(people).forEach((id) => {
    const p = people[id];
    if (p.role !== "provider" && (p.state === "admitted" || p.state === "in_visit")) { taken += 1; }
  });
  return taken;
}

function button(action, cls, id) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = t("action." + action);
  if (cls) { b.className = cls; }
  b.dataset.action = action;
  b.dataset.participant = id;
  return b;
}

function render() {
  list.textContent = "";
  const waiting = [];
  Object.keys(people).forEach((id) => {
    const p = people[id];
    if (p.state === "new") { return; }
    const li = document.createElement("li");
    li.dataset.participant = id;
    li.dataset.state = p.state;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = label(id, p);
    const state = document.createElement("span");
    state.className = "state";
    state.textContent = describe(p);
    const actions = document.createElement("span");
    actions.className = "actions";
    if (p.role !== "provider") {
      if (p.state === "waiting") {
        actions.appendChild(button("admit", "", id));
        actions.appendChild(button("deny", "secondary", id));
        waiting.push(t("alert.waiting", { who: label(id, p), time: time(p.since) }));
      } else if (p.state === "admitted" || p.state === "in_visit") {
        actions.appendChild(button("remove", "danger", id));
      }
    }
    li.appendChild(who);
    li.appendChild(state);
    li.appendChild(actions);
    list.appendChild(li);
  });
  empty.hidden = list.children.length > 0;
  alertBox.hidden = waiting.length === 0;
  alertBox.textContent = waiting.join(" · ");
  const taken = occupancy();
  fullBox.hidden = !(waiting.length && taken >= roomSize);
  fullBox.textContent = t("room_full", { taken: taken, size: roomSize });
}

/** Say in the page's status line what went wrong with what the clinician asked for (empty clears it). */
function say(code) {
  if (!code) {
    notice.textContent = "";
    notice.hidden = true;
    return;
  }
  const key = "error." + code;
  notice.textContent = t(key) === key ? t("error.other", { code: code }) : t(key);
  notice.hidden = false;
}

const presence = new PresenceClient({
  maxAttempts: 30,
  auth: () => ({ provider: providerHandle.current(), where: "view" }),
  onAuthenticated: (info) => { self = info.participant; },
  onSnapshot: (events, frame) => {
    events.forEach(apply);
    const shown = frame.display_names && typeof frame.display_names === "object" ? frame.display_names : {};
    Object.keys(shown).forEach((id) => {
      if (typeof shown[id] === "string") { names[id] = shown[id]; }
    });
  },
  onEvent: (event) => {
    apply(event);
    render();
  },
  onSynced: () => {
    live = true;
    status.textContent = t("status.live");
    render();
  },
  onFrame: (frame) => {
    if (frame.type === "display_name" && typeof frame.participant === "string" &&
        typeof frame.display_name === "string") {
      names[frame.participant] = frame.display_name;
      render();
    }
  },
  // Error frames answering a request are said where the request is settled (below); others here.
  onError: (code, frame, request) => { if (!request) { say(code); } },
  onStatus: (state) => {
    // "live" once the snapshot, or the events missed while away, are in (onSynced).
    if (state !== "open" && state !== "closed") { status.textContent = t("status." + state); }
  },
});

if (providerHandle.current() && list) {
  list.addEventListener("click", (e) => {
    const target = e.target;
    if (!(target instanceof HTMLButtonElement) || !target.dataset.action) { return; }
    target.disabled = true;
    say(null);
    presence.request({type: target.dataset.action, participant: target.dataset.participant})
      .catch((error) => {
        say(error.code);
        render(); // the button comes back, for another try
      });
  });
  presence.start();
}
