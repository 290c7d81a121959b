/* The one way the browser's scripts get words: the server renders each page's strings, already translated
 * for the request's language from the same Babel catalog as the templates (launch/page_strings.py), into
 * <script type="application/json" id="i18n">. A JSON data block is not executed, so the strict CSP holds.
 *
 * t("key", {name: value}) returns the string for key with its {name} placeholders filled in. A key the
 * block lacks comes back as the key itself, so a missing string shows as a visible key, never as "undefined".
 */

function load() {
  const block = document.getElementById("i18n");
  if (!block) return {};
  try {
    const parsed = JSON.parse(block.textContent || "{}");
    return parsed && typeof parsed === "object" && !Array.isArray(parsed) ? parsed : {};
  } catch (err) {
    return {};
  }
}

const strings = load();

/** The page's language, as the server chose it (the <html lang> attribute). */
export const lang = document.documentElement.lang || "en";

/** Whether the page has a string for key. */
export function has(key) {
  return Object.prototype.hasOwnProperty.call(strings, key) && typeof strings[key] === "string";
}

/** The translated string for key, with each {name} replaced by params[name] (left as is when absent). */
export function t(key, params) {
  const text = has(key) ? strings[key] : key;
  if (!params) return text;
  return text.replace(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (whole, name) =>
    Object.prototype.hasOwnProperty.call(params, name) ? String(params[name]) : whole);
}

/** A time of day (hours and minutes) in the page's language. */
export function time(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  try {
    return d.toLocaleTimeString(lang, { hour: "2-digit", minute: "2-digit" });
  } catch (err) {
    return ("0" + d.getHours()).slice(-2) + ":" + ("0" + d.getMinutes()).slice(-2);
  }
}
