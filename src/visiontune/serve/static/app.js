// The visiontune page: pick, drop, paste or photograph an image; POST it to /predict; draw the top-k as bars.
// Server text is only ever set with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, preview: null };

const pretty = (label) => label.replace(/_/g, " ");
const percent = (p) => `${(100 * p).toFixed(1)}%`;

async function loadInfo() {
  try {
    const response = await fetch("/info");
    state.info = await response.json();
  } catch (error) {
    $("model-line").textContent = "The server did not answer /info.";
    return;
  }
  const info = state.info;
  const classes = info.classes.length <= 12 ? `: ${info.classes.map(pretty).join(", ")}` : "";
  $("model-line").textContent = `${info.architecture} · ${info.num_classes} classes${classes}`;
  $("limits").textContent = `JPEG, PNG, WebP, GIF, BMP or TIFF, up to ${info.limits.max_upload_mb} MB`;
  $("key-row").hidden = !info.api_key_required;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function choose(file) {
  if (!file) return;
  $("error").hidden = true;
  if (state.preview) URL.revokeObjectURL(state.preview);
  state.preview = URL.createObjectURL(file);
  $("preview").src = state.preview;
  $("file-name").textContent = file.name || "pasted image";
  $("result").hidden = false;
  document.body.classList.add("has-result");
  $("verdict").hidden = true;
  $("bars").replaceChildren();
  $("busy").hidden = false;
  upload(file).finally(() => { $("busy").hidden = true; });
}

async function upload(file) {
  const form = new FormData();
  form.append("file", file, file.name || "pasted.png");
  const headers = {};
  const key = $("api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  const topk = Math.min(5, state.info ? state.info.num_classes : 5);
  let response, body;
  try {
    response = await fetch(`/predict?topk=${topk}`, { method: "POST", body: form, headers });
    body = await response.json();
  } catch (error) {
    showError("The server could not be reached, or did not answer with JSON.");
    return;
  }
  if (!response.ok) {
    if (response.status === 401) $("key-row").hidden = false;
    showError(body.error || `The server answered ${response.status}.`);
    $("result").hidden = true;
    document.body.classList.remove("has-result");
    return;
  }
  render(body);
}

function render(prediction) {
  const best = prediction.predictions[0];
  $("result").hidden = false;
  document.body.classList.add("has-result");
  $("unknown").hidden = !prediction.unknown;
  $("verdict").classList.toggle("is-unknown", prediction.unknown);
  $("verdict-kicker").textContent = prediction.unknown ? "Best guess, for what it is worth" : "This looks like";
  $("top-label").textContent = pretty(best.label);
  $("top-sub").textContent = `${percent(best.probability)} probability`;
  renderSet(prediction.prediction_set);
  $("verdict").hidden = false;
  const rows = prediction.predictions.map((entry, index) => {
    const row = document.createElement("li");
    row.className = index === 0 ? "bar best" : "bar";
    const name = document.createElement("span");
    name.className = "bar-label";
    name.textContent = pretty(entry.label);
    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${Math.max(0.5, 100 * entry.probability)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = percent(entry.probability);
    row.append(name, track, value);
    return row;
  });
  $("bars").replaceChildren(...rows);
}

// The conformal set: the labels that hold the true class with the bundle's coverage (e.g. 90%).
function renderSet(labels) {
  const set = $("set");
  set.hidden = labels === null || labels === undefined;
  if (set.hidden) return;
  const coverage = state.info && state.info.conformal ? Math.round(100 * state.info.conformal.coverage) : 90;
  set.classList.toggle("is-ambiguous", labels.length > 1);
  if (labels.length === 0) {
    $("set-kicker").textContent = `${coverage}% set:`;
    $("set-labels").textContent = "no other label needed (very confident)";
  } else if (labels.length === 1) {
    $("set-kicker").textContent = `Confident: the ${coverage}% set is one label:`;
    $("set-labels").textContent = pretty(labels[0]);
  } else {
    $("set-kicker").textContent = `Ambiguous: the ${coverage}% set has ${labels.length} labels:`;
    $("set-labels").textContent = labels.map(pretty).join(" · ");
  }
}

function wireDrop() {
  const drop = $("drop");
  for (const input of [$("file-input"), $("camera-input")]) {
    input.addEventListener("change", () => { choose(input.files[0]); input.value = ""; });
  }
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    choose(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = Array.from(event.clipboardData.items).find((i) => i.type.startsWith("image/"));
    if (item) choose(item.getAsFile());
  });
}

wireDrop();
loadInfo();
