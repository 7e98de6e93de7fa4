// The page's behaviour: describe the model, send the upload, announce and show the result.
// Plain DOM, no framework and no CDN, so the page works offline inside the bento.
"use strict";

const $ = (id) => document.getElementById(id);
const FIELD_INPUT = { image: "file-image", a: "file-a", b: "file-b", c: "file-c", key: "api-key" };
const KEY_STORE = "pbf-api-key"; // sessionStorage: the key lives as long as the tab
const MAX_ROWS = 20; // regions listed in the table; the overlay and the mask show all
let userChoseMode = false; // the model's preferred input is preselected only until the user picks

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

// The API key, when the service asks for one (401): sent as X-API-Key with every call.
function keyHeaders() {
  const key = $("api-key").value.trim() || sessionStorage.getItem(KEY_STORE) || "";
  return key ? { "X-API-Key": key } : {};
}

function askForKey() {
  $("key-inputs").hidden = false;
}

function rememberKey() {
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
}

function showMode() {
  const triplet = mode() === "triplet";
  $("single-inputs").hidden = triplet;
  $("triplet-inputs").hidden = !triplet;
}

async function describeModel(attempt = 0) {
  const info = $("model-info");
  try {
    const resp = await fetch("/model", { headers: keyHeaders() });
    if (resp.status === 401) {
      askForKey();
      info.textContent = "This service needs an API key: enter it below to see the model.";
      return;
    }
    const body = await resp.json();
    if (!resp.ok || !body.ready) throw new Error(body.error || resp.statusText);
    const { spec, info: id } = body;
    const views = spec.views.length > 1 ? `the views ${spec.views.join(", ")}` : "one image";
    info.textContent =
      `Model ${id.name} version ${id.version} (${id.variant}) reads ${views}; ` +
      `decision threshold ${spec.threshold.toFixed(2)}, tiles of ${spec.tile_size} px.`;
    if (spec.views.length > 1 && !userChoseMode) {
      $("mode-triplet").checked = true;
      showMode();
    }
  } catch (err) {
    info.textContent = "The model is still loading; the page will update when it is ready.";
    if (attempt < 40) setTimeout(() => describeModel(attempt + 1), 3000);
  }
}

function errorText(body, status) {
  if (Array.isArray(body)) body = body[0] || {};
  if (body && typeof body.error === "string") {
    const detail = Array.isArray(body.detail)
      ? " (" + body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ") + ")"
      : "";
    return body.error + detail;
  }
  return `the server answered ${status}`;
}

function setBusy(busy) {
  const button = $("analyze");
  button.setAttribute("aria-disabled", String(busy));
  button.textContent = busy ? "Analyzing…" : "Analyze layer";
  $("result").setAttribute("aria-busy", String(busy));
}

function clearInvalid() {
  for (const id of Object.values(FIELD_INPUT)) $(id).removeAttribute("aria-invalid");
  $("form-error").textContent = "";
}

function fail(message, field) {
  $("form-error").textContent = message;
  $("status").textContent = "The layer could not be analysed: " + message;
  const input = field && FIELD_INPUT[field] ? $(FIELD_INPUT[field]) : null;
  if (input && !input.closest("[hidden]")) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  } else {
    $("result-heading").focus();
  }
}

function fact(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

function render(result) {
  $("status").textContent = result.summary;
  const img = $("overlay");
  img.src = "data:image/png;base64," + result.overlay_png;
  img.alt = "Overlay of the analysed layer. " + result.summary;
  img.width = Math.min(result.width, 1024);
  $("download").href = img.src;

  const facts = $("facts");
  facts.replaceChildren();
  fact(facts, "Verdict", result.is_defective ? "Defective" : "No defect found");
  fact(facts, "Highest defect probability", result.max_confidence.toFixed(3));
  fact(facts, "Defect area", `${result.defect_area_pct.toFixed(2)} % of the layer`);
  fact(facts, "Defect regions", String(result.num_components));
  fact(facts, "Decision threshold", result.threshold.toFixed(2));
  fact(facts, "Layer size", `${result.width} × ${result.height} px (${result.input} upload)`);
  const m = result.model;
  const runtime = m.runtime === "openvino" ? "OpenVINO" : "ONNX Runtime";
  fact(facts, "Model", `${m.name} version ${m.version} (${m.variant}, run by ${runtime})`);

  const body = $("components").querySelector("tbody");
  body.replaceChildren();
  if (result.components.length === 0) {
    const row = body.insertRow();
    const cell = row.insertCell();
    cell.colSpan = 5;
    cell.textContent = "No defect regions.";
  }
  const shown = result.components.slice(0, MAX_ROWS);
  shown.forEach((c, i) => {
    const row = body.insertRow();
    const [x0, y0, x1, y1] = c.bbox;
    for (const text of [i + 1, `${x0}–${x1}`, `${y0}–${y1}`, c.area_px, c.max_prob.toFixed(3)]) {
      row.insertCell().textContent = String(text);
    }
  });
  if (result.num_components > shown.length) {
    const cell = body.insertRow().insertCell();
    cell.colSpan = 5;
    cell.textContent = `… and ${result.num_components - shown.length} more regions (all are in the mask).`;
  }
  $("details").hidden = false;
  $("result-heading").focus();
}

async function analyze(event) {
  event.preventDefault();
  if ($("analyze").getAttribute("aria-disabled") === "true") return;
  clearInvalid();
  const fields = mode() === "single" ? ["image"] : ["a", "b", "c"];
  const data = new FormData();
  for (const field of fields) {
    const input = $(FIELD_INPUT[field]);
    if (!input.files.length) {
      const what = field === "image" ? "a layer image" : `view ${field}`;
      fail(`Choose ${what} first.`, field);
      return;
    }
    data.append(field, input.files[0]);
  }
  setBusy(true);
  $("status").textContent = "Analyzing the layer…";
  try {
    const resp = await fetch("/segment", { method: "POST", body: data, headers: keyHeaders() });
    let body = null;
    try {
      body = await resp.json();
    } catch {
      body = null;
    }
    if (resp.status === 401) {
      askForKey();
      fail("this service needs a valid API key: enter it in the API key field.", "key");
      return;
    }
    if (!resp.ok) {
      fail(errorText(body, resp.status), body && !Array.isArray(body) ? body.field : null);
      return;
    }
    render(body);
  } catch (err) {
    fail("the server could not be reached (" + err.message + ").", null);
  } finally {
    setBusy(false);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      userChoseMode = true;
      showMode();
    });
  }
  showMode();
  $("upload").addEventListener("submit", analyze);
  $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("api-key").addEventListener("change", () => {
    rememberKey();
    describeModel();
  });
  describeModel();
});
