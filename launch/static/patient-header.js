/* The patient pages' header: the appointment's time, shown in the page's language and the device's time zone
 * (the server writes it in UTC, for a browser without scripts). */
export function formatTime(iso, withDate) {
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return null;
  const lang = document.documentElement.lang || undefined;
  const options = withDate ? { dateStyle: "medium", timeStyle: "short" } : { timeStyle: "short" };
  try {
    return new Intl.DateTimeFormat(lang, options).format(at);
  } catch (err) {
    return at.toLocaleString();
  }
}

const time = document.querySelector("#appointment time");
if (time) {
  const text = formatTime(time.getAttribute("datetime"), true);
  if (text) time.textContent = text;
}
