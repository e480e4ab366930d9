// breastdx web client: upload one image, wait for the analysis, show overlay, lesions and score.
// Plain JavaScript, no framework. Talks to the /v1 API like any client; all text goes through
// textContent (never innerHTML). The API key, if given, lives in this tab's sessionStorage.
"use strict";

(() => {
  const KEY_STORAGE = "breastdx.apiKey";
  const WAIT_SECONDS = 30; // Prefer: wait=N on the submission
  const POLL_WAIT_SECONDS = 10; // Prefer: wait=N on each poll
  const POLL_PAUSE_MS = 500;
  const MAX_POLLS = 600;
  const DONE = new Set(["succeeded", "failed"]); // JobState's final states
  const STEPS = ["decode", "preprocess", "inference", "postprocess", "total"];

  const $ = (id) => document.getElementById(id);
  let chosenFile = null;
  let overlayUrl = null;

  class ProblemError extends Error {
    constructor(title, detail) {
      super(title);
      this.title = title;
      this.detail = detail;
    }
  }

  function apiHeaders(extra) {
    const headers = new Headers(extra || {});
    const key = $("api-key").value.trim();
    if (key) headers.set("X-API-Key", key);
    return headers;
  }

  async function problemFrom(response) {
    // An RFC 9457 problem document: show its title and detail.
    try {
      const body = await response.json();
      return new ProblemError(body.title || `HTTP ${response.status}`, body.detail || "");
    } catch {
      return new ProblemError(`HTTP ${response.status}`, response.statusText || "");
    }
  }

  function jobProblem(job) {
    // JobPublic.error (JobError): the typed error's title and detail.
    const error = job.error || {};
    return new ProblemError(
      error.title || "The analysis failed",
      error.detail || `the job ended in state ${job.state}`,
    );
  }

  const stateOf = (job) => job.state || "";
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function setStatus(text) {
    $("status").textContent = text;
  }

  function showError(problem) {
    $("error-title").textContent = problem.title || "Error";
    $("error-detail").textContent = problem.detail || "";
    $("error").hidden = false;
  }

  function uploadName(file) {
    // Never send the local file name (it may name the patient): keep only a known extension.
    const match = /\.(dcm|dicom|png|jpe?g|tiff?|pgm)$/i.exec(file.name || "");
    return match ? `image.${match[1].toLowerCase()}` : "image";
  }

  async function submit(stage, file) {
    const form = new FormData();
    form.append("file", file, uploadName(file));
    const url = `/v1/${encodeURIComponent(stage)}/analyses`;
    const headers = apiHeaders({ Prefer: `wait=${WAIT_SECONDS}`, Accept: "application/json" });
    let response = await fetch(url, { method: "POST", headers, body: form });
    if (!response.ok) throw await problemFrom(response);
    let job = await response.json();
    const location = response.headers.get("Location") || job.links.self;
    for (let poll = 0; response.status === 202 || !DONE.has(stateOf(job)); poll += 1) {
      if (poll >= MAX_POLLS) throw new ProblemError("Still running", "gave up waiting");
      setStatus(`Analysis ${stateOf(job) || "queued"}…`);
      await sleep(POLL_PAUSE_MS);
      response = await fetch(location, {
        headers: apiHeaders({ Prefer: `wait=${POLL_WAIT_SECONDS}`, Accept: "application/json" }),
      });
      if (!response.ok) throw await problemFrom(response);
      job = await response.json();
    }
    if (stateOf(job) !== "succeeded") throw jobProblem(job);
    return job;
  }

  function firstResult(job) {
    // JobPublic.result: one AnalysisResult per uploaded image; this page uploads one.
    if (Array.isArray(job.result) && job.result.length) return job.result[0];
    throw new ProblemError("No result", "the analysis finished without a result");
  }

  async function showOverlay(job) {
    const base = job.links.overlay || `/v1/analyses/${encodeURIComponent(job.id)}/overlay.png`;
    const url = `${base}?index=0`;
    const response = await fetch(url, { headers: apiHeaders({ Accept: "image/png" }) });
    if (!response.ok) throw await problemFrom(response);
    const blob = await response.blob();
    if (overlayUrl) URL.revokeObjectURL(overlayUrl);
    overlayUrl = URL.createObjectURL(blob);
    const image = $("overlay");
    await new Promise((resolve, reject) => {
      image.onload = resolve;
      image.onerror = () => reject(new ProblemError("Overlay unreadable", "not a PNG image"));
      image.src = overlayUrl;
    });
  }

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
  }

  function showLesions(result) {
    const body = $("lesions").querySelector("tbody");
    body.replaceChildren();
    const lesions = result.lesions || [];
    for (const lesion of lesions) {
      const row = document.createElement("tr");
      const [x, y, w, h] = lesion.bbox;
      cell(row, String(lesion.id));
      cell(row, `${x}, ${y}, ${w} × ${h}`);
      cell(row, lesion.area_px.toLocaleString());
      cell(row, lesion.area_mm2 == null ? "–" : lesion.area_mm2.toFixed(2));
      body.appendChild(row);
    }
    if (!lesions.length) {
      const row = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 4;
      td.textContent = "No lesion found above the mask threshold.";
      row.appendChild(td);
      body.appendChild(row);
    }
    $("lesion-count").textContent = `(${lesions.length})`;
    $("no-spacing").hidden = !lesions.length || lesions.every((l) => l.area_mm2 != null);
  }

  function showScore(result) {
    const m = result.malignancy;
    if (!m) {
      $("score").textContent = "no score";
      $("score-label").textContent = "";
      $("threshold").textContent = "–";
      $("calibration").textContent = "nothing to classify (see the notes below)";
      return;
    }
    $("score").textContent = `${(m.probability * 100).toFixed(1)} %`;
    $("score-label").textContent = m.label;
    $("score-label").dataset.call = m.probability >= m.threshold ? "positive" : "negative";
    $("threshold").textContent = `${(m.threshold * 100).toFixed(1)} %`;
    $("calibration").textContent = m.calibrated
      ? `calibrated (temperature ${m.temperature.toFixed(2)})`
      : "not calibrated";
  }

  function showTimings(result, roundTripMs) {
    const body = $("timings").querySelector("tbody");
    body.replaceChildren();
    const rows = STEPS.map((step) => [step, result.timings_ms[step]]);
    rows.push(["round trip (this page)", roundTripMs]);
    for (const [name, ms] of rows) {
      const row = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = name;
      row.appendChild(th);
      cell(row, `${ms.toFixed(1)} ms`);
      body.appendChild(row);
    }
  }

  function showResult(result, roundTripMs) {
    showScore(result);
    showLesions(result);
    const model = result.model;
    $("model").textContent = `${model.name}@${model.version}${model.fp16 ? " (fp16)" : ""}`;
    showTimings(result, roundTripMs);
    const warnings = $("warnings");
    warnings.replaceChildren();
    for (const text of result.warnings || []) {
      const item = document.createElement("li");
      item.textContent = text;
      warnings.appendChild(item);
    }
    $("result-disclaimer").textContent = result.disclaimer;
    $("result").hidden = false;
  }

  async function onSubmit(event) {
    event.preventDefault();
    if (!chosenFile) return;
    rememberKey();
    $("error").hidden = true;
    $("result").hidden = true;
    $("submit").disabled = true;
    document.body.dataset.state = "running";
    const started = performance.now();
    try {
      setStatus("Uploading…");
      const job = await submit($("stage").value, chosenFile);
      const result = firstResult(job);
      setStatus("Loading the overlay…");
      await showOverlay(job);
      showResult(result, performance.now() - started);
      setStatus("Done.");
      document.body.dataset.state = "done";
    } catch (error) {
      const problem = error instanceof ProblemError
        ? error
        : new ProblemError("Request failed", String(error.message || error));
      showError(problem);
      setStatus("");
      document.body.dataset.state = "error";
    } finally {
      $("submit").disabled = !chosenFile;
    }
  }

  function choose(file) {
    chosenFile = file || null;
    const chosen = $("chosen");
    chosen.hidden = !chosenFile;
    const kib = chosenFile ? Math.ceil(chosenFile.size / 1024) : 0;
    chosen.textContent = chosenFile ? `${chosenFile.name} (${kib} KiB)` : "";
    $("submit").disabled = !chosenFile;
  }

  function wireDropZone() {
    const zone = $("drop-zone");
    for (const name of ["dragenter", "dragover"]) {
      zone.addEventListener(name, (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    }
    for (const name of ["dragleave", "drop"]) {
      zone.addEventListener(name, () => zone.classList.remove("dragging"));
    }
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      const files = event.dataTransfer ? event.dataTransfer.files : [];
      if (files.length) choose(files[0]);
    });
    zone.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        $("file").click();
      }
    });
    $("file").addEventListener("change", (event) => choose(event.target.files[0]));
  }

  async function showStageModels() {
    // Optional: name the model serving each stage. Silently skipped without access.
    try {
      const headers = apiHeaders({ Accept: "application/json" });
      const response = await fetch("/v1/models", { headers });
      if (!response.ok) return;
      const models = (await response.json()).models || []; // ModelsPublic
      const byStage = new Map();
      for (const model of models) {
        if (model.stage && !byStage.has(model.stage)) byStage.set(model.stage, model.ref);
      }
      const update = () => {
        const ref = byStage.get($("stage").value);
        $("stage-model").textContent = ref ? `model ${ref}` : "";
      };
      $("stage").addEventListener("change", update);
      update();
    } catch {
      // the page works without it
    }
  }

  function rememberKey() {
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  }

  function wireApiKey() {
    const input = $("api-key");
    input.value = sessionStorage.getItem(KEY_STORAGE) || "";
    input.addEventListener("change", () => {
      rememberKey();
      showStageModels();
    });
    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
      input.value = "";
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    wireApiKey();
    wireDropZone();
    $("analyse-form").addEventListener("submit", onSubmit);
    document.body.dataset.state = "idle";
    showStageModels();
  });
})();
