// The clinician's clinic queue: today's visits of theirs (or their department's), who waits and for how long,
// who is in a visit, with Admit. Watches them over the one presence client (a `subscribe_queue` socket,
// presence/queue.py); patient names come from /provider/{handle}/queue/patients, read from FHIR when asked
// and held in this page's memory only. Changes nobody asked for (someone starts waiting, is let in) are
// announced politely; waits are shown in whole minutes and recounted every half minute.
import { announce } from "./announce.js";
import { t } from "./i18n.js";
import { PresenceClient } from "./presence-client.js";
import * as providerHandle from "./provider-handle.js";
import { applyEvent, label as roleLabel } from "./waiting.js";

const root = document.getElementById("queue");
const lists = {
  waiting: document.getElementById("queue-waiting"),
  in_visit: document.getElementById("queue-in-visit"),
  other: document.getElementById("queue-other"),
};
const empties = {
  waiting: document.getElementById("waiting-empty"),
  in_visit: document.getElementById("in-visit-empty"),
  other: document.getElementById("other-empty"),
};
const status = document.getElementById("queue-status");
const notice = document.getElementById("queue-notice");
const TICK_MS = 30000;

let scope = "own";
let visits = new Map(); // visit id -> {id, createdAt, lastId, people, ended, patient, problem}
let clockOffset = 0; // the gateway's clock minus this browser's, from the snapshot (waits use the gateway's)
let live = false;

function freshVisit(v) {
  return { id: v.visit, createdAt: v.created_at, lastId: 0, people: {}, ended: false, patient: null,
           problem: null };
}

function now() { return Date.now() + clockOffset; }

/** Whole minutes since an ISO time, as the queue shows waits ("<1 min", "12 min"). */
export function minutesSince(iso, at) {
  const since = Date.parse(iso);
  if (Number.isNaN(since)) { return ""; }
  const minutes = Math.max(0, Math.floor((at - since) / 60000));
  return minutes < 1 ? t("queue.under_a_minute") : t("queue.minutes", { minutes: minutes });
}

function patientName(visit) {
  if (visit.patient) { return visit.patient; }
  return visit.problem ? t("queue.no_name") : t("role.patient");
}

function who(visit, id, p) {
  if (p.role === "patient") { return patientName(visit); }
  return t("queue.visit_of", { who: roleLabel(id, p, {}), patient: patientName(visit) });
}

// Events of one visit come in id order on the socket, but a snapshot may still be answered while live ones
// arrive, so each visit keeps the last id it applied.
function apply(event) {
  const visit = visits.get(event.visit);
  if (!visit || event.id <= visit.lastId) { return; }
  visit.lastId = event.id;
  if (event.kind === "visit_ended") {
    visit.ended = true;
    return;
  }
  if (event.role === "provider") { return; }
  const before = visit.people[event.participant] ? visit.people[event.participant].state : null;
  applyEvent(visit.people, event, null);
  const p = visit.people[event.participant];
  if (live && p && before !== p.state) {
    if (p.state === "waiting") { announce(t("queue.now_waiting", { who: who(visit, event.participant, p) })); }
    if (p.state === "in_visit") { announce(t("queue.now_in_visit", { who: who(visit, event.participant, p) })); }
  }
}

function admitButton(id, text) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = t("action.admit");
  b.setAttribute("aria-label", t("queue.admit_who", { who: text }));
  b.dataset.participant = id;
  return b;
}

function row(visit, id, p, kind) {
  const li = document.createElement("li");
  li.dataset.visit = visit.id;
  if (id) { li.dataset.participant = id; }
  li.dataset.state = kind;
  const name = document.createElement("span");
  name.className = "who";
  const text = id ? who(visit, id, p) : patientName(visit);
  name.textContent = text;
  li.appendChild(name);
  const state = document.createElement("span");
  state.className = "state";
  if (kind === "waiting") {
    const wait = document.createElement("span");
    wait.className = "wait";
    wait.dataset.since = p.since;
    wait.textContent = minutesSince(p.since, now());
    state.appendChild(document.createTextNode(t("queue.waiting") + " "));
    state.appendChild(wait);
    if (p.device === "failed") { state.appendChild(document.createTextNode(" · " + t("queue.device_problem"))); }
  } else if (kind === "in_visit") {
    state.textContent = p.state === "admitted" ? t("queue.joining")
      : t("queue.in_visit_for", { minutes: minutesSince(p.since, now()) });
  } else {
    state.textContent = visit.ended ? t("queue.ended") : describeOther(visit);
  }
  li.appendChild(state);
  if (kind === "waiting") {
    const actions = document.createElement("span");
    actions.className = "actions";
    actions.appendChild(admitButton(id, text));
    li.appendChild(actions);
  }
  return li;
}

function describeOther(visit) {
  const states = Object.keys(visit.people).map((id) => visit.people[id].state);
  if (states.indexOf("left") >= 0 || states.indexOf("disconnected") >= 0) { return t("queue.left"); }
  if (states.indexOf("denied") >= 0 || states.indexOf("removed") >= 0) { return t("queue.not_admitted"); }
  return t("queue.not_arrived");
}

function render() {
  const rows = { waiting: [], in_visit: [], other: [] };
  const focused = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.participant : null;
  visits.forEach((visit) => {
    let shown = false;
    if (!visit.ended) {
      Object.keys(visit.people).forEach((id) => {
        const p = visit.people[id];
        if (p.state === "waiting") { rows.waiting.push([p.since, row(visit, id, p, "waiting")]); shown = true; }
        if (p.state === "in_visit" || p.state === "admitted") {
          rows.in_visit.push([p.since, row(visit, id, p, "in_visit")]);
          shown = true;
        }
      });
    }
    if (!shown) { rows.other.push([visit.createdAt, row(visit, null, null, "other")]); }
  });
  Object.keys(rows).forEach((kind) => {
    rows[kind].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)); // longest wait first
    lists[kind].replaceChildren(...rows[kind].map((r) => r[1]));
    empties[kind].hidden = rows[kind].length > 0;
  });
  if (focused) {
    // Keyboard users keep their place when a row is redrawn under them.
    const again = root.querySelector('button[data-participant="' + focused + '"]');
    if (again) { again.focus(); }
  }
}

function tick() {
  root.querySelectorAll(".wait[data-since]").forEach((el) => {
    el.textContent = minutesSince(el.dataset.since, now());
  });
}

function say(code) {
  if (!code) {
    notice.hidden = true;
    notice.textContent = "";
    return;
  }
  const key = "error." + code;
  notice.textContent = t(key) === key ? t("error.other", { code: code }) : t(key);
  notice.hidden = false;
}

function patientsUrl(ids) {
  const url = new URL("/provider/" + encodeURIComponent(providerHandle.current()) + "/queue/patients",
                      window.location.href);
  url.searchParams.set("scope", scope);
  (ids || []).forEach((id) => url.searchParams.append("visit", id));
  return url.href;
}

function loadNames(ids) {
  const asked = scope;
  fetch(patientsUrl(ids), { credentials: "same-origin", cache: "no-store",
                            headers: { "Accept": "application/json" } })
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error(String(r.status)))))
    .then((body) => {
      if (asked !== scope || !body || !Array.isArray(body.visits)) { return; }
      body.visits.forEach((v) => {
        const visit = visits.get(v.visit);
        if (!visit) { return; }
        visit.patient = typeof v.patient === "string" ? v.patient : null;
        visit.problem = typeof v.problem === "string" ? v.problem : null;
      });
      render();
    })
    .catch(() => { say("names_unavailable"); });
}

function take(frame) {
  (Array.isArray(frame.visits) ? frame.visits : []).forEach((v) => {
    if (v && typeof v.visit === "string" && !visits.has(v.visit)) { visits.set(v.visit, freshVisit(v)); }
  });
  const events = (Array.isArray(frame.events) ? frame.events : []).slice().sort((a, b) => a.id - b.id);
  events.forEach(apply);
}

const presence = new PresenceClient({
  maxAttempts: 30,
  dedupe: false,
  auth: () => ({ provider: providerHandle.current(), where: "queue" }),
  subscribeFrame: () => ({ type: "subscribe_queue", scope: scope }),
  onSnapshot: (events, frame) => {
    // A new snapshot (first, after a reconnect, or another scope) replaces the whole queue.
    live = false;
    const names = new Map(Array.from(visits.values()).map((v) => [v.id, [v.patient, v.problem]]));
    visits = new Map();
    const at = Date.parse(frame.now);
    if (!Number.isNaN(at)) { clockOffset = at - Date.now(); }
    take({ visits: frame.visits, events: events });
    visits.forEach((v) => {
      const known = names.get(v.id);
      if (known) { v.patient = known[0]; v.problem = known[1]; }
    });
    // After a reconnect only the visits still without a name are read from the EHR again.
    const unnamed = Array.from(visits.values()).filter((v) => !v.patient).map((v) => v.id);
    if (unnamed.length === visits.size) { loadNames(); } else if (unnamed.length) { loadNames(unnamed.slice(0, 50)); }
  },
  onSynced: () => {
    live = true;
    status.textContent = t("status.live");
    root.dataset.scope = scope;
    render();
  },
  onEvent: (event) => { apply(event); render(); },
  onFrame: (frame) => {
    if (frame.type !== "queue_visits") { return; }
    live = false;
    take(frame);
    live = true;
    const ids = (Array.isArray(frame.visits) ? frame.visits : []).map((v) => v.visit);
    if (ids.length) { loadNames(ids); }
    render();
  },
  onError: (code, frame, request) => { if (!request || request.type === "subscribe_queue") { say(code); } },
  onStatus: (state) => {
    if (state !== "open" && state !== "closed") { status.textContent = t("status." + state); }
  },
});

if (root && providerHandle.current()) {
  root.addEventListener("click", (e) => {
    const target = e.target;
    if (!(target instanceof HTMLButtonElement) || !target.dataset.participant) { return; }
    target.disabled = true;
    say(null);
    presence.request({ type: "admit", participant: target.dataset.participant })
      .then(() => announce(t("queue.admitted")))
      .catch((error) => { say(error.code); target.disabled = false; });
  });
  root.addEventListener("change", (e) => {
    const target = e.target;
    if (!(target instanceof HTMLInputElement) || target.name !== "scope" || !target.checked) { return; }
    scope = target.value === "department" ? "department" : "own";
    say(null);
    status.textContent = t("status.connecting");
    presence.stop();
    presence.start();
  });
  setInterval(tick, TICK_MS);
  presence.start();
}
