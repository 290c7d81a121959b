// Copy buttons of the integration records: each button copies the text of the element its
// data-copy-target names, and a polite live region says so. Without this script the buttons stay hidden
// and every value is plain selectable text.
const status = document.getElementById("copy-status");

async function copy(button) {
  const target = document.getElementById(button.dataset.copyTarget);
  if (!target || !navigator.clipboard) {
    if (status) status.textContent = "Copying is not available here: select the text instead.";
    return;
  }
  try {
    await navigator.clipboard.writeText(target.textContent.trim());
    if (status) {
      // Cleared first so that copying the same value twice is announced twice.
      status.textContent = "";
      window.setTimeout(() => { status.textContent = "Copied"; }, 50);
    }
  } catch {
    if (status) status.textContent = "Copying was refused: select the text instead.";
  }
}

for (const button of document.querySelectorAll("button[data-copy-target]")) {
  button.hidden = false;
  button.addEventListener("click", () => { copy(button); });
}
