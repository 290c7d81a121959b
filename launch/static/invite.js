// The provider view's "Send the link" panel: posts to /provider/{handle}/invite with fetch() and shows
// the answer. No inline script or style anywhere (CSP default-src 'self'); words from i18n.js.
import { t } from "./i18n.js";

const panel = document.getElementById("send-link");
if (panel) {
  var result = document.getElementById("send-link-result");
  var message = document.getElementById("send-link-message");
  var copyRow = document.getElementById("send-link-copy");
  var linkField = document.getElementById("send-link-url");
  var copyButton = document.getElementById("send-link-copy-button");
  var busy = false;

  function show(text, link) {
    message.textContent = text;
    result.hidden = false;
    copyButton.textContent = t("invite.copy");
    if (link) {
      linkField.value = link;
      copyRow.hidden = false;
    } else {
      linkField.value = "";
      copyRow.hidden = true;
    }
  }

  function setBusy(on) {
    busy = on;
    panel.querySelectorAll("button").forEach(function (b) {
      if (b !== copyButton) { b.disabled = on; }
    });
  }

  function send(fields) {
    if (busy) { return; }
    setBusy(true);
    show(t("invite.sending"), null);
    // From the current URL: its handle is renewed while the page is open (provider-handle.js).
    fetch(window.location.pathname.replace(/\/+$/, "") + "/invite", {
      method: "POST",
      body: new URLSearchParams(fields),
      headers: { "Accept": "application/json" },
      credentials: "same-origin",
      cache: "no-store"
    }).then(function (response) {
      return response.json().catch(function () {
        return { ok: false, message: response.status === 401
          ? t("invite.expired") : t("invite.failed_status", { status: response.status }) };
      });
    }).then(function (data) {
      show(data.message || (data.ok ? t("invite.done") : t("invite.failed")), data.ok ? data.link : null);
      if (data.ok) { document.dispatchEvent(new CustomEvent("visitgate:invited")); } // invitations.js lists it
    }).catch(function () {
      show(t("invite.unreachable"), null);
    }).finally(function () {
      setBusy(false);
    });
  }

  panel.querySelectorAll("button[data-channel]").forEach(function (button) {
    button.addEventListener("click", function () {
      send({ role: button.getAttribute("data-role"), channel: button.getAttribute("data-channel") });
    });
  });

  var guestForm = document.getElementById("invite-guest");
  var address = document.getElementById("guest-address");
  var channel = document.getElementById("guest-channel");
  function syncAddress() {
    var copy = channel.value === "copy";
    address.disabled = copy;
    address.required = !copy;
    address.type = channel.value === "email" ? "email" : (channel.value === "sms" ? "tel" : "text");
  }
  channel.addEventListener("change", syncAddress);
  syncAddress();
  guestForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var fields = {};
    new FormData(guestForm).forEach(function (value, key) { fields[key] = String(value); });
    send(fields);
    // What the clinician typed is not kept on the page either.
    address.value = "";
  });

  copyButton.addEventListener("click", function () {
    var text = linkField.value;
    if (!text) { return; }
    function copied() { copyButton.textContent = t("invite.copied"); }
    function fallback() {
      linkField.focus();
      linkField.select();
      try { if (document.execCommand("copy")) { copied(); } } catch (e) { /* selected for Ctrl-C */ }
    }
    if (navigator.clipboard && navigator.clipboard.writeText) {
      // Inside an EHR iframe the clipboard may need a permission the EHR did not grant.
      navigator.clipboard.writeText(text).then(copied, fallback);
    } else {
      fallback();
    }
  });
}
