// The provider view's list of links sent (GET /provider/{handle}/invitations): whom each was for and by
// which channel, never where to; Revoke makes its links stop working, Re-send sends a fresh one (the earlier
// ones stop working). A guest's address was never kept, so re-sending to a guest by email or SMS asks for it
// again. Answers are shown in the "Send the link" panel's result line, as invite.js shows its own.
import { t, time } from "./i18n.js";

const panel = document.getElementById("invitations-panel");
const list = document.getElementById("invitations");

function base() {
  // From the current URL: its handle is renewed while the page is open (provider-handle.js).
  return window.location.pathname.replace(/\/+$/, "");
}

function show(text, link) {
  const result = document.getElementById("send-link-result");
  const copyRow = document.getElementById("send-link-copy");
  const linkField = document.getElementById("send-link-url");
  document.getElementById("send-link-message").textContent = text;
  result.hidden = false;
  linkField.value = link || "";
  copyRow.hidden = !link;
}

function who(item) {
  const role = item.role === "patient" ? "patient" : "guest";
  let text = t("role." + role);
  if (role === "guest" && item.guest_kind) {
    text = t("who.guest_kind", { role: text, kind: t("guest." + item.guest_kind) });
  }
  return text;
}

function button(text, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (cls) { b.className = cls; }
  b.addEventListener("click", onClick);
  return b;
}

function post(item, action, fields) {
  list.querySelectorAll("button").forEach((b) => { b.disabled = true; });
  show(t("invite.sending"), null);
  return fetch(`${base()}/invite/${encodeURIComponent(item.participant)}/${action}`, {
    method: "POST", body: new URLSearchParams(fields || {}), headers: { "Accept": "application/json" },
    credentials: "same-origin", cache: "no-store",
  }).then((response) => response.json().catch(() => ({
    ok: false, message: response.status === 401 ? t("invite.expired")
      : t("invite.failed_status", { status: response.status }) })))
    .then((data) => show(data.message || (data.ok ? t("invite.done") : t("invite.failed")),
                         data.ok ? data.link : null))
    .catch(() => show(t("invite.unreachable"), null))
    .finally(load);
}

function askAddress(li, item) {
  if (li.querySelector("form")) { return; }
  const form = document.createElement("form");
  form.className = "invitation-again";
  const id = "again-" + item.participant;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = t("invitations.address");
  const input = document.createElement("input");
  input.id = id;
  input.type = item.channel === "email" ? "email" : "tel";
  input.autocomplete = "off";
  input.required = true;
  const send = document.createElement("button");
  send.type = "submit";
  send.textContent = t("invitations.send");
  form.appendChild(label);
  form.appendChild(input);
  form.appendChild(send);
  form.appendChild(button(t("invitations.copy_instead"), "secondary", () => post(item, "resend",
                                                                                    { channel: "copy" })));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const address = input.value;
    input.value = ""; // what the clinician typed is not kept on the page either
    post(item, "resend", { address: address });
  });
  li.appendChild(form);
  input.focus();
}

function render(items) {
  list.textContent = "";
  items.forEach((item) => {
    const li = document.createElement("li");
    li.dataset.participant = item.participant;
    li.dataset.live = item.live ? "true" : "false";
    const what = document.createElement("span");
    what.className = "who";
    what.textContent = t("invitations.item", { who: who(item), channel: t("invitations.channel." + item.channel),
                                               time: time(item.sent_at) });
    const state = document.createElement("span");
    state.className = "state";
    state.textContent = t(item.live ? "invitations.live" : "invitations.revoked");
    const actions = document.createElement("span");
    actions.className = "actions";
    if (item.live) {
      actions.appendChild(button(t("invitations.revoke"), "danger", () => post(item, "revoke")));
    }
    actions.appendChild(button(t("invitations.resend"), "secondary", () => {
      if (item.role === "guest" && item.channel !== "copy") { askAddress(li, item); } else { post(item, "resend"); }
    }));
    li.appendChild(what);
    li.appendChild(state);
    li.appendChild(actions);
    list.appendChild(li);
  });
  panel.hidden = items.length === 0;
}

function load() {
  return fetch(`${base()}/invitations`, { headers: { "Accept": "application/json" }, credentials: "same-origin",
                                           cache: "no-store" })
    .then((response) => (response.ok ? response.json() : Promise.reject(new Error(String(response.status)))))
    .then((data) => render(Array.isArray(data.invitations) ? data.invitations : []))
    .catch(() => { /* the list stays as it was; sending still works */ });
}

if (panel && list) {
  document.addEventListener("visitgate:invited", load);
  load();
}
