// The provider view's "Sign in with Microsoft": Entra's pages refuse to be framed and this view lives in the
// EHR's iframe, so the sign-in opens in a pop-up; once it closes, the view reloads and the meeting is made.
const link = document.getElementById("teams-sign-in");
if (link) {
  link.addEventListener("click", (event) => {
    const popup = window.open(link.href, "visitgate-teams-sign-in", "popup,width=520,height=680");
    if (!popup) return; // pop-ups blocked: the link opens in a new tab instead, and the retry button reloads
    event.preventDefault();
    const watch = window.setInterval(() => {
      if (popup.closed) {
        window.clearInterval(watch);
        window.location.reload();
      }
    }, 500);
  });
}
