// The provider view's live participant list: who is waiting, since when, admit / deny / remove.
// Talks to /ws through the one presence client (presence-client.js), which resumes by event id after a
// reconnect; what the gateway refuses is said in #presence-notice.
import { t, time } from "./i18n.js";
import { PresenceClient } from "./presence-client.js";
import * as providerHandle from "./provider-handle.js";
import * as visitEnd from "./visit-end.js";
import { WaitingList, applyEvent, describe as describeState, label as labelOf } from "./waiting.js";
import { describeDeviceTest } from "./device-result.js";

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
// The knock (chime, tab title, desktop notification) and the clinician's side of the chat: waiting.js,
// shared with the video room, which also holds the states and labels this list shows.
const knocks = new WaitingList({ request: (frame) => presence.request(frame) });

function apply(event) {
  applyEvent(people, event, self);
}

function label(id, p) {
  return labelOf(id, p, names);
}

function describe(p) {
  return describeState(p);
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
    const device = describeDeviceTest(p.deviceDetail);
    if (device) {
      const line = document.createElement("span");
      line.className = "device-test";
      line.textContent = device;
      li.appendChild(line);
    }
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
  onAuthenticated: (info) => { self = info.participant; knocks.setSelf(self); },
  onSnapshot: (events, frame) => {
    knocks.snapshot(events, frame);
    events.forEach(apply);
    events.forEach(visitEnd.watch);
    const shown = frame.display_names && typeof frame.display_names === "object" ? frame.display_names : {};
    Object.keys(shown).forEach((id) => {
      if (typeof shown[id] === "string") { names[id] = shown[id]; }
    });
  },
  onEvent: (event) => {
    apply(event);
    render();
    knocks.event(event);
    visitEnd.watch(event);
  },
  onSynced: () => {
    knocks.synced();
    status.textContent = t("status.live");
    render();
  },
  onFrame: (frame) => {
    knocks.frame(frame);
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
  visitEnd.endVisitButton(presence);
}
