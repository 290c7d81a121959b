/* What screen readers say aloud when something happens that the person did not cause (being let in, turned
 * away, the clinician arriving): two visually hidden live regions, one polite and one assertive.
 *
 * They are put in the page when this module loads, before anything is said: a live region that appears at
 * the moment its text changes is not read by every screen reader. Tests read #announce-polite and
 * #announce-assertive.
 */

function makeRegion(politeness) {
  const id = "announce-" + politeness;
  let region = document.getElementById(id);
  if (!region) {
    region = document.createElement("div");
    region.id = id;
    region.className = "visually-hidden";
    // status (polite) and alert (assertive) carry their politeness; aria-live is said again for older readers.
    region.setAttribute("role", politeness === "assertive" ? "alert" : "status");
    region.setAttribute("aria-live", politeness);
    region.setAttribute("aria-atomic", "true");
    (document.querySelector("main") || document.body).appendChild(region); // inside a landmark, like all content
  }
  return region;
}

const regions = { polite: makeRegion("polite"), assertive: makeRegion("assertive") };

/** Say text aloud through a screen reader: politely (after what it is reading), or at once when assertive. */
export function announce(text, { assertive = false } = {}) {
  const region = regions[assertive ? "assertive" : "polite"];
  if (region.textContent !== text) {
    region.textContent = text;
    return;
  }
  // The same words again are no change, so nothing would be read: empty the region, then refill it.
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 100);
}
