/* Waiting-room chat (docs/presence-protocol.md, "chat"): short text messages between the clinicians and one
 * waiting patient or guest, over the page's presence socket. Used by the lobby (the patient's or guest's
 * side: they write to the clinicians) and by the provider view and the room (the clinician's side: they pick
 * whom to write to).
 *
 * The markup is launch/templates/chat.html, rendered only when the organisation has chat on; without it this
 * module does nothing. Messages are shown with textContent only, never as markup, in a role="log" region that
 * screen readers read as each message arrives. Nothing is kept: a reload starts an empty conversation.
 */
import { t } from "./i18n.js";

const MAX = 500;
const KEPT = 200; // messages shown at most; older ones leave the page

/** The chat panel of this page, or null when the page has none (chat off, or not rendered here). */
export function chatRoot() {
  const root = document.getElementById("chat");
  return root && root.dataset.chat === "on" ? root : null;
}

function errorText(code) {
  const key = "chat.error." + code;
  const said = t(key);
  return said === key ? t("chat.error.other", { code: code }) : said;
}

export class Chat {
  /**
   * options: request(frame) -> Promise (the presence client's request), clinician (true on the clinician's
   * side), who(participantId) -> how the clinician's page names a patient or guest.
   */
  constructor(root, options) {
    this.root = root;
    this.request = options.request;
    this.clinician = Boolean(options.clinician);
    this.who = options.who || (() => t("chat.someone"));
    this.self = null;
    this.log = root.querySelector("[data-chat-log]");
    this.form = root.querySelector("[data-chat-form]");
    this.text = root.querySelector("[data-chat-text]");
    this.to = root.querySelector("[data-chat-to]");
    this.toRow = root.querySelector("[data-chat-to-row]");
    this.error = root.querySelector("[data-chat-error]");
    this.empty = root.querySelector("[data-chat-empty]");
    this.people = [];
    this.text.maxLength = MAX;
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });
    if (this.clinician) {
      this.toRow.hidden = false;
      this.setPeople([]);
    }
  }

  /** This page's own participant id (from auth_ok): its own messages come back marked as its own. */
  setSelf(id) {
    this.self = id;
  }

  /** Clinician's side: who can be written to, [{id, label}] (the others are taken out of the list). */
  setPeople(people) {
    if (!this.clinician) return;
    const chosen = this.to.value;
    const same = people.length === this.people.length &&
      people.every((p, i) => p.id === this.people[i].id && p.label === this.people[i].label);
    if (same) return;
    this.people = people;
    this.to.textContent = "";
    people.forEach((p) => {
      const option = document.createElement("option");
      option.value = p.id;
      option.textContent = p.label;
      this.to.appendChild(option);
    });
    if (people.some((p) => p.id === chosen)) this.to.value = chosen;
    const none = people.length === 0;
    this.to.disabled = none;
    this.form.querySelector("button").disabled = none;
    this.text.disabled = none;
  }

  /** Write to the conversation from this page; the message shows when the gateway delivers it back. */
  send() {
    const text = this.text.value.trim();
    if (!text) return;
    const frame = { type: "chat", text: text };
    if (this.clinician) {
      if (!this.to.value) return;
      frame.to = this.to.value;
    }
    this.say(null);
    const button = this.form.querySelector("button");
    button.disabled = true;
    this.request(frame).then(() => {
      if (this.text.value.trim() === text) this.text.value = "";
    }).catch((error) => this.say(error.code)).finally(() => {
      button.disabled = this.clinician && this.people.length === 0;
      this.text.focus();
    });
  }

  say(code) {
    this.error.hidden = !code;
    this.error.textContent = code ? errorText(code) : "";
  }

  /** A frame from the presence client: true when it was a chat message (shown here). */
  frame(frame) {
    if (frame.type !== "chat") return false;
    if (typeof frame.text !== "string" || typeof frame.participant !== "string" || typeof frame.from !== "string") {
      return true;
    }
    this.show(frame);
    return true;
  }

  show(frame) {
    const mine = frame.from === this.self;
    let who;
    if (this.clinician) {
      const them = this.who(frame.participant);
      if (frame.role === "provider") who = t(mine ? "chat.you_to" : "chat.clinician_to", { who: them });
      else who = them;
    } else {
      who = mine ? t("chat.you") : t("chat.clinician");
    }
    const item = document.createElement("p");
    item.className = "chat-message" + (mine ? " mine" : "");
    item.dataset.participant = frame.participant;
    const name = document.createElement("span");
    name.className = "chat-who";
    name.textContent = who + ": ";
    const body = document.createElement("span");
    body.className = "chat-text";
    body.textContent = frame.text;  // text, never markup
    item.appendChild(name);
    item.appendChild(body);
    this.log.appendChild(item);
    while (this.log.children.length > KEPT) this.log.removeChild(this.log.firstChild);
    if (this.empty) this.empty.hidden = true;
    this.log.scrollTop = this.log.scrollHeight;
  }
}
