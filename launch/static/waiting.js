/* The knock: who is waiting to be let in, for the clinician, wherever they are (the provider view and the
 * video room share this module).
 *
 * From the presence events it keeps each participant's state (waiting since, devices, admitted, in the
 * visit...), and when someone starts waiting it knocks: a short chime made with the Web Audio API (no audio
 * file; a browser may keep it silent until the clinician has clicked or typed in the page, which is fine: the
 * rest still shows), the tab's title counts who waits ("(1) waiting — …") and goes back when nobody does, and
 * while the page is hidden a desktop notification says so, once the clinician allowed notifications with the
 * page's button (never an automatic prompt). With a list element it also shows the list with Admit and Deny
 * (the room); the provider view draws its own list and uses the state, labels and knock from here. It also
 * hosts the clinician's side of the waiting-room chat (chat.js), whose "To" list is the people it knows.
 */
import { t, time } from "./i18n.js";
import { Chat, chatRoot } from "./chat.js";

/**
 * Apply one presence event to people (participant id -> state); returns true when someone began waiting.
 * Sockets are counted: a reload opens the new one before the old one's close may be written, and the
 * sockets of a gateway process that died are closed for it later (so after their successors opened).
 */
export function applyEvent(people, event, self) {
  if (!event.participant || event.participant === self) { return false; }
  const p = people[event.participant] || (people[event.participant] = {
    role: event.role, guestKind: event.guest_kind, state: "new", since: event.at, device: null,
    lobbies: 0, rooms: 0});
  let knocked = false;
  switch (event.kind) {
    case "lobby_entered":
      p.lobbies += 1;
      // Back after leaving the lobby (a reload, a dropped network, another device): the same wait goes on.
      if (p.state === "left") { p.since = p.waited; } else if (p.state !== "waiting") { p.since = event.at; knocked = true; }
      p.waited = p.since;
      p.state = "waiting";
      break;
    case "device_test_passed": p.device = "passed"; p.deviceDetail = event.detail || null; break;
    case "device_test_failed": p.device = "failed"; p.deviceDetail = event.detail || null; break;
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
  return knocked;
}

/** How the clinician's pages name a participant: role, guest kind, and the name they typed, if any. */
export function label(id, p, names) {
  const role = ["patient", "guest", "provider"].indexOf(p.role) >= 0 ? p.role : "other";
  let text = t("role." + role);
  if (p.role === "guest" && p.guestKind) {
    const kind = "guest." + p.guestKind;
    text = t("who.guest_kind", { role: text, kind: t(kind) === kind ? p.guestKind : t(kind) });
  }
  if (names[id]) { text = t("who.named", { who: text, name: names[id] }); }
  return text;
}

/** A participant's state in words ("waiting since 10:02 · devices OK"). */
export function describe(p) {
  const at = { time: time(p.since) };
  if (p.state === "waiting") {
    return t(p.device === "passed" ? "state.devices_ok" : p.device === "failed" ? "state.device_problem"
      : "state.waiting", at);
  }
  return p.state === "new" ? "" : t("state." + p.state, at);
}

// One audio context per page, made (or resumed) on the clinician's first click or key: browsers allow sound
// only after the person interacted with the page. Until then the chime is skipped, silently.
let audio = null;

function unlockAudio() {
  try {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) { return; }
    audio = audio || new Context();
    if (audio.state === "suspended") { audio.resume().catch(() => {}); }
  } catch (err) { audio = null; }
}

["pointerdown", "keydown"].forEach((type) => window.addEventListener(type, unlockAudio, { capture: true }));

/** Two short soft tones; returns whether they could be played. */
export function chime() {
  if (!audio || audio.state !== "running") { return false; }
  try {
    [0, 0.22].forEach((offset, n) => {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      const at = audio.currentTime + offset;
      osc.frequency.value = n === 0 ? 660 : 880;
      gain.gain.setValueAtTime(0.0001, at);
      gain.gain.exponentialRampToValueAtTime(0.2, at + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, at + 0.16);
      osc.connect(gain).connect(audio.destination);
      osc.start(at);
      osc.stop(at + 0.18);
    });
    return true;
  } catch (err) {
    return false;
  }
}

/** The notification button (#knock-notify): shown while permission can still be asked for. */
function setUpNotifyButton() {
  const row = document.getElementById("knock-notify");
  const button = document.getElementById("knock-notify-button");
  const said = document.getElementById("knock-notify-status");
  if (!row || !button || !("Notification" in window)) { return; }
  const show = () => {
    const permission = Notification.permission;
    button.hidden = permission !== "default";
    if (said) {
      said.textContent = permission === "granted" ? t("waiting.notify_on")
        : permission === "denied" ? t("waiting.notify_blocked") : "";
    }
  };
  row.hidden = false;
  show();
  button.addEventListener("click", () => {
    Promise.resolve(Notification.requestPermission()).then(show, show);
  });
}

export class WaitingList {
  /**
   * options: request(frame) -> Promise (the presence client's), list (a <ul> to show the people in, or null),
   * empty (shown when the list is), notice (where a refused action is said), onChange() (after each change).
   */
  constructor(options) {
    this.options = options || {};
    this.people = {};
    this.names = {};
    this.self = null;
    this.live = false; // the first snapshot is in: from here on a knock is news
    this.baseTitle = document.title;
    this.count = 0;
    const root = chatRoot();
    this.chat = root ? new Chat(root, { request: (f) => this.options.request(f), clinician: true,
                                        who: (id) => this.label(id) }) : null;
    const list = this.options.list;
    if (list) {
      list.addEventListener("click", (e) => this._clicked(e));
    }
    setUpNotifyButton();
    window.visitgateWaiting = this; // tests read count and the title from here
  }

  setSelf(id) {
    this.self = id;
    if (this.chat) { this.chat.setSelf(id); }
  }

  label(id) {
    const p = this.people[id];
    return p ? label(id, p, this.names) : t("role.other");
  }

  /** The first snapshot's events and display names (a resumed subscription sends events instead). */
  snapshot(events, frame) {
    events.forEach((e) => applyEvent(this.people, e, this.self));
    const shown = frame && frame.display_names && typeof frame.display_names === "object" ? frame.display_names : {};
    Object.keys(shown).forEach((id) => {
      if (typeof shown[id] === "string") { this.names[id] = shown[id]; }
    });
  }

  event(e) {
    if (applyEvent(this.people, e, this.self) && this.live) { this._knock(e.participant); }
    this.render();
  }

  synced() {
    this.live = true;
    this.render();
  }

  /** Any other presence frame: display names and chat messages. */
  frame(frame) {
    if (frame.type === "display_name" && typeof frame.participant === "string" &&
        typeof frame.display_name === "string") {
      this.names[frame.participant] = frame.display_name;
      this.render();
    } else if (this.chat) {
      this.chat.frame(frame);
    }
  }

  waiting() {
    return Object.keys(this.people).filter((id) => this.people[id].role !== "provider" &&
                                                   this.people[id].state === "waiting");
  }

  _knock(id) {
    chime();
    if (document.hidden && "Notification" in window && Notification.permission === "granted") {
      try {
        // The role only: a name a patient typed does not go to the desktop's notification centre.
        const p = this.people[id];
        const who = p ? label(id, p, {}) : t("role.other");
        const note = new Notification(t("waiting.notify_title"), { body: t("waiting.notify_body", { who: who }),
                                                                   tag: "visitgate-waiting" });
        note.onclick = () => { window.focus(); note.close(); };
      } catch (err) { /* some browsers allow notifications only from a service worker */ }
    }
  }

  render() {
    const waiting = this.waiting();
    this.count = waiting.length;
    document.title = waiting.length ? t("waiting.title", { count: waiting.length, title: this.baseTitle })
      : this.baseTitle;
    if (this.chat) {
      // The clinician writes to whoever is not a clinician and still in the visit's lobby or room.
      const open = ["waiting", "admitted", "in_visit"];
      this.chat.setPeople(Object.keys(this.people)
        .filter((id) => this.people[id].role !== "provider" && open.indexOf(this.people[id].state) >= 0)
        .map((id) => ({ id: id, label: this.label(id) })));
    }
    const list = this.options.list;
    if (list) {
      list.textContent = "";
      Object.keys(this.people).forEach((id) => {
        const p = this.people[id];
        if (p.state === "new") { return; }
        const li = document.createElement("li");
        li.dataset.participant = id;
        li.dataset.state = p.state;
        const who = document.createElement("span");
        who.className = "who";
        who.textContent = this.label(id);
        const state = document.createElement("span");
        state.className = "state";
        state.textContent = describe(p);
        const actions = document.createElement("span");
        actions.className = "actions";
        if (p.role === "provider") {
          // Another clinician of the visit: listed, never admitted or removed from here.
        } else if (p.state === "waiting") {
          actions.appendChild(this._button("admit", "", id));
          actions.appendChild(this._button("deny", "secondary", id));
        } else if (p.state === "admitted" || p.state === "in_visit") {
          actions.appendChild(this._button("remove", "danger", id));
        }
        li.appendChild(who);
        li.appendChild(state);
        li.appendChild(actions);
        list.appendChild(li);
      });
      if (this.options.empty) { this.options.empty.hidden = list.children.length > 0; }
    }
    if (this.options.onChange) { this.options.onChange(); }
  }

  _button(action, cls, id) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = t("action." + action);
    if (cls) { b.className = cls; }
    b.dataset.action = action;
    b.dataset.participant = id;
    return b;
  }

  _say(code) {
    const notice = this.options.notice;
    if (!notice) { return; }
    const key = "error." + code;
    notice.hidden = !code;
    notice.textContent = !code ? "" : t(key) === key ? t("error.other", { code: code }) : t(key);
  }

  _clicked(e) {
    const target = e.target;
    if (!(target instanceof HTMLButtonElement) || !target.dataset.action) { return; }
    target.disabled = true;
    this._say(null);
    this.options.request({ type: target.dataset.action, participant: target.dataset.participant })
      .catch((error) => {
        this._say(error.code);
        this.render(); // the button comes back, for another try
      });
  }
}
