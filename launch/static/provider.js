// The provider view's live participant list: who is waiting, since when, admit / deny / remove.
// Talks to /ws as described in docs/presence-protocol.md and resumes by event id after a reconnect.
(function () {
  "use strict";
  // Renewed while the page is open (provider-handle.js): always authenticate with the current one.
  var handles = window.vgProviderHandle;
  var handle = handles ? handles.current() : window.location.pathname.split("/").filter(Boolean)[1];
  var list = document.getElementById("participant-list");
  var empty = document.getElementById("participants-empty");
  var status = document.getElementById("presence-status");
  var alertBox = document.getElementById("waiting-alert");
  var fullBox = document.getElementById("room-full");
  var section = document.getElementById("participants");
  if (!handle || !list) { return; }
  // The video room is a mesh: past this many people every browser would carry too many streams, so the
  // room pages turn the next one away. Say so here, before the clinician admits someone into a full room.
  var roomSize = Number(section && section.dataset.roomSize) || 4;

  var people = {};        // participant id -> {role, guestKind, state, since, device, name}
  var names = {};
  var self = null;
  var lastId = null;
  var socket = null;
  var nextRequest = 1;
  var attempts = 0;
  var audio = null;

  var ROLE = {patient: "Patient", guest: "Guest", provider: "Clinician"};
  var GUEST = {interpreter: "interpreter", family: "family member", caregiver: "caregiver", other: "guest"};

  function hhmm(iso) {
    var d = new Date(iso);
    return ("0" + d.getHours()).slice(-2) + ":" + ("0" + d.getMinutes()).slice(-2);
  }

  function knock() {
    // Two short tones; browsers may refuse audio before a click in the page, which is fine: the alert shows.
    try {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      [0, 0.25].forEach(function (offset) {
        var osc = audio.createOscillator();
        var gain = audio.createGain();
        osc.frequency.value = 660;
        gain.gain.value = 0.2;
        osc.connect(gain).connect(audio.destination);
        osc.start(audio.currentTime + offset);
        osc.stop(audio.currentTime + offset + 0.12);
      });
    } catch (e) { /* no audio available */ }
  }

  function apply(event) {
    if (lastId !== null && event.id <= lastId) { return; }   // never twice
    lastId = event.id;
    if (!event.participant || event.participant === self) { return; }
    var p = people[event.participant] || (people[event.participant] = {
      role: event.role, guestKind: event.guest_kind, state: "new", since: event.at, device: null,
      lobbies: 0, rooms: 0});
    // Sockets are counted: a reload opens the new one before the old one's close may be written, and the
    // sockets of a gateway process that died are closed for it later (so after their successors opened).
    switch (event.kind) {
      case "lobby_entered":
        p.lobbies += 1;
        if (p.state !== "waiting") { p.since = event.at; }
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

  var live = false;

  function label(id, p) {
    var text = ROLE[p.role] || "Participant";
    if (p.role === "guest" && p.guestKind) { text += " (" + (GUEST[p.guestKind] || p.guestKind) + ")"; }
    if (names[id]) { text += ": " + names[id]; }
    return text;
  }

  function describe(p) {
    var at = hhmm(p.since);
    switch (p.state) {
      case "waiting":
        return "waiting since " + at + (p.device === "passed" ? " · devices OK" : p.device === "failed" ? " · device problem" : "");
      case "admitted": return "admitted at " + at + ", joining…";
      case "in_visit": return "in the visit since " + at;
      case "online": return "online since " + at;
      case "disconnected": return "disconnected at " + at;
      case "left": return "left the lobby at " + at;
      case "denied": return "not admitted (" + at + ")";
      case "removed": return "removed at " + at;
      default: return "";
    }
  }

  // Who holds (or is about to take) a place in the video room: this clinician, and every patient or guest
  // admitted or connected. Other clinicians' "online" may be this page only, so they are not counted.
  function occupancy() {
    var taken = 1;
    Object.keys(people).forEach(function (id) {
      var p = people[id];
      if (p.role !== "provider" && (p.state === "admitted" || p.state === "in_visit")) { taken += 1; }
    });
    return taken;
  }

  function button(text, cls, action, id) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    if (cls) { b.className = cls; }
    b.dataset.action = action;
    b.dataset.participant = id;
    return b;
  }

  function render() {
    list.textContent = "";
    var waiting = [];
    Object.keys(people).forEach(function (id) {
      var p = people[id];
      if (p.state === "new") { return; }
      var li = document.createElement("li");
      li.dataset.participant = id;
      li.dataset.state = p.state;
      var who = document.createElement("span");
      who.className = "who";
      who.textContent = label(id, p);
      var state = document.createElement("span");
      state.className = "state";
      state.textContent = describe(p);
      var actions = document.createElement("span");
      actions.className = "actions";
      if (p.role !== "provider") {
        if (p.state === "waiting") {
          actions.appendChild(button("Admit", "", "admit", id));
          actions.appendChild(button("Deny", "secondary", "deny", id));
          waiting.push(label(id, p) + " waiting since " + hhmm(p.since));
        } else if (p.state === "admitted" || p.state === "in_visit") {
          actions.appendChild(button("Remove", "danger", "remove", id));
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
    var taken = occupancy();
    fullBox.hidden = !(waiting.length && taken >= roomSize);
    fullBox.textContent = "The video room is full (" + taken + " of " + roomSize + "): " +
      "remove someone before admitting another person, or they will be turned away.";
  }

  list.addEventListener("click", function (e) {
    var target = e.target;
    if (!(target instanceof HTMLButtonElement) || !socket || socket.readyState !== 1) { return; }
    target.disabled = true;
    send({type: target.dataset.action, participant: target.dataset.participant});
  });

  function send(frame) {
    frame.id = nextRequest++;
    socket.send(JSON.stringify(frame));
  }

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + "/ws");
    socket.onopen = function () {
      send({type: "auth", provider: handles ? handles.current() : handle, where: "view"});
    };
    socket.onmessage = function (message) {
      var frame = JSON.parse(message.data);
      if (frame.type === "auth_ok") {
        self = frame.participant;
        attempts = 0;
        send({type: "subscribe", after: lastId});
      } else if (frame.type === "snapshot") {
        frame.events.forEach(apply);
        Object.keys(frame.display_names || {}).forEach(function (id) { names[id] = frame.display_names[id]; });
        if (frame.last_id > (lastId || 0)) { lastId = frame.last_id; }
        live = true;
        status.textContent = "live";
        render();
      } else if (frame.type === "event") {
        apply(frame);
        render();
      } else if (frame.type === "result" && frame.last_id !== undefined) {
        live = true;
        status.textContent = "live";
        render();
      } else if (frame.type === "display_name") {
        names[frame.participant] = frame.display_name;
        render();
      } else if (frame.type === "error" && frame.code === "auth_failed") {
        status.textContent = "this page has expired: open the visit again from the EHR";
        socket.onclose = null;
      } else if (frame.type === "error") {
        render();
      }
    };
    socket.onclose = function () {
      live = false;
      attempts += 1;
      if (attempts > 30) { status.textContent = "offline: reload the page"; return; }
      status.textContent = "reconnecting…";
      setTimeout(connect, Math.min(10000, 250 * Math.pow(2, attempts)) * (0.5 + Math.random() / 2));
    };
  }

  connect();
}());
