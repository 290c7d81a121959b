// The SMS set-up page's progress list: while an operation (getting or releasing a number) is unfinished, ask
// the gateway where it stands every two seconds and redraw the list; when the last one finishes, reload the
// page once so the numbers table shows the outcome. Without this script the page still shows the progress as
// of its loading, and a reload shows the rest.
const box = document.getElementById("operations");
const list = document.getElementById("operation-list");

function describe(op) {
  const item = document.createElement("li");
  item.dataset.operation = String(op.id);
  item.dataset.step = op.step;
  item.append(op.kind === "purchase" ? "Getting a number: " : `Releasing ${op.number}: `);
  const step = document.createElement("span");
  step.className = "step";
  step.textContent = op.text;
  item.append(step);
  if (op.number && op.kind === "purchase") {
    const number = document.createElement("span");
    number.className = "number";
    number.textContent = ` ${op.number}`;
    item.append(number);
  }
  if (op.error) {
    const error = document.createElement("span");
    error.className = "error";
    error.textContent = ` ${op.error}`;
    item.append(error);
  }
  return item;
}

function unfinished() {
  return [...list.querySelectorAll("li[data-step]")].some(
    (li) => li.dataset.step !== "succeeded" && li.dataset.step !== "failed");
}

async function poll() {
  let answer;
  try {
    const response = await fetch(box.dataset.url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!response.ok) return true; // signed out or refused: stop; a reload explains why
    answer = await response.json();
  } catch {
    return false; // the gateway is restarting: keep asking
  }
  const wasRunning = unfinished();
  const items = answer.operations.map(describe);
  // Only what changed is replaced, so a screen reader is not read the whole list every time.
  const same = items.length === list.children.length && items.every(
    (item, i) => item.textContent === list.children[i].textContent);
  if (!same) list.replaceChildren(...items);
  if (wasRunning && !unfinished()) {
    window.location.reload();
    return true;
  }
  return !unfinished();
}

async function follow() {
  if (!box || !list || !unfinished()) return;
  for (;;) {
    await new Promise((resolve) => window.setTimeout(resolve, 2000));
    if (await poll()) return;
  }
}

follow();
