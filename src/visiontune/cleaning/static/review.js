// The review page: one suspect at a time (or a grid); each decision is POSTed and written at once.
"use strict";
let state = { classes: [], items: [] };
let current = 0;

const $ = (id) => document.getElementById(id);
const pretty = (label) => label.replaceAll("_", " ");

function firstUndecided(from) {
  const n = state.items.length;
  for (let k = 0; k < n; k++) {
    const i = (from + k) % n;
    if (!state.items[i].decision) return i;
  }
  return -1;
}

function describe(decision) {
  if (!decision) return "undecided";
  if (decision.action === "relabel") return "relabelled to " + pretty(decision.label);
  return { keep: "kept as labelled", exclude: "excluded", no_class: "none of the classes" }[decision.action];
}

function showProgress() {
  const done = state.items.filter((item) => item.decision).length;
  $("progress").textContent = state.items.length
    ? `suspect ${current + 1} of ${state.items.length} · ${done} decided`
    : "no suspects: nothing to review";
}

function show(index) {
  if (!state.items.length) { showProgress(); $("single").hidden = true; return; }
  current = Math.max(0, Math.min(index, state.items.length - 1));
  const item = state.items[current];
  $("image").src = `/api/image/${item.id}`;
  $("path").textContent = item.path;
  $("given").textContent = pretty(item.given);
  $("suggested").textContent = pretty(item.suggested);
  $("kind").textContent = `${item.kinds.map(pretty).join(", ")} · score ${item.score.toFixed(2)}`;
  $("top3").replaceChildren(...item.top.map((t) => {
    const li = document.createElement("li");
    li.textContent = `${pretty(t.label)} ${(100 * t.probability).toFixed(1)}%`;
    return li;
  }));
  $("decision").textContent = describe(item.decision);
  $("decision").dataset.action = item.decision ? item.decision.action : "";
  showProgress();
  if (!$("grid").hidden) drawGrid();
}

async function decide(action, label) {
  const item = state.items[current];
  if (!item) return;
  $("error").hidden = true;
  const response = await fetch("/api/decide", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ id: item.id, action: action, label: label || null }),
  });
  const answer = await response.json();
  if (!response.ok) { $("error").textContent = answer.detail || answer.error || response.statusText; $("error").hidden = false; return; }
  state.items[current] = answer;
  const next = firstUndecided(current);
  show(next === -1 ? current : next);
}

function act(action) {
  if (action === "accept") return decide("relabel", state.items[current].suggested);
  return decide(action);
}

function classButtons() {
  $("classes").replaceChildren(...state.classes.map((name, k) => {
    const button = document.createElement("button");
    button.type = "button";
    button.innerHTML = k < 10 ? `<kbd>${(k + 1) % 10}</kbd> ` : "";
    button.append(pretty(name));
    button.addEventListener("click", () => decide("relabel", name));
    return button;
  }));
}

function drawGrid() {
  $("grid").replaceChildren(...state.items.map((item, k) => {
    const cell = document.createElement("div");
    cell.className = "cell" + (item.decision ? " decided" : "") + (k === current ? " current" : "");
    const img = document.createElement("img");
    img.src = `/api/image/${item.id}`;
    img.alt = item.path;
    const caption = document.createElement("div");
    caption.textContent = `${pretty(item.given)} → ${pretty(item.suggested)} (${item.score.toFixed(2)}) ${item.decision ? "✓" : ""}`;
    cell.append(img, caption);
    cell.addEventListener("click", () => { toggleGrid(false); show(k); });
    return cell;
  }));
}

function toggleGrid(on) {
  const grid = on === undefined ? $("grid").hidden : on;
  $("grid").hidden = !grid;
  $("single").hidden = grid;
  if (grid) drawGrid();
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  const digit = "1234567890".indexOf(key);
  if (key === "k") act("keep");
  else if (key === "a" || key === "Enter") act("accept");
  else if (key === "n") act("no_class");
  else if (key === "x") act("exclude");
  else if (digit >= 0 && digit < state.classes.length) decide("relabel", state.classes[digit]);
  else if (key === "ArrowRight") show(current + 1);
  else if (key === "ArrowLeft") show(current - 1);
  else if (key === "u") { const next = firstUndecided(current); if (next >= 0) show(next); }
  else if (key === "g") toggleGrid();
  else return;
  event.preventDefault();
});

for (const button of document.querySelectorAll("#actions button")) {
  button.addEventListener("click", () => act(button.dataset.action));
}
$("toggle-grid").addEventListener("click", () => toggleGrid());

async function start() {
  state = await (await fetch("/api/state")).json();
  $("corrections-file").textContent = state.corrections;
  classButtons();
  const first = firstUndecided(0);
  show(first === -1 ? 0 : first);
}
start();
