// The web page of the video service: it speaks the same /v1/videos API as any client.
// URLs are relative so the page also works where the app is mounted under a prefix.
"use strict";

const KEY_STORAGE = "stdit-engine.api-key";  // sessionStorage: the key lives as long as the tab
const POLL_MS = 500;        // the selected job, while it is queued or running
const RETRY_MS = 3000;      // after a failed poll that may pass (network, 5xx, 429)
const LIST_MS = 2000;       // the recent-jobs table
const LIST_LIMIT = 20;
const FINISHED = new Set(["completed", "failed", "cancelled"]);

const $ = (id) => document.getElementById(id);

const state = {
  selected: null,      // id of the job shown in the "Selected job" panel
  shownVideo: null,    // id of the job whose video is in the <video> element
  videoUrl: null,      // its blob URL, revoked when replaced
  pollTimer: null,
};

// --- the API key -----------------------------------------------------------------------------

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function showKeyState() {
  const hasKey = apiKey() !== "";
  $("key-state").textContent = hasKey ? "key set for this tab" : "";
  $("key-forget").hidden = !hasKey;
}

function saveKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  $("api-key").value = "";
  showKeyState();
  say("");
  refreshList();
}

function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
  showKeyState();
}

// --- requests --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// A video cannot send a Bearer header from <video src>, so every request, the content included,
// goes through fetch() with the key, and the video is shown from a blob URL.
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const key = apiKey();
  if (key) headers["Authorization"] = "Bearer " + key;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) throw new ApiError(response.status, await errorText(response));
  return response;
}

async function errorText(response) {
  if (response.status === 401) return "This server needs an API key: enter it above.";
  try {
    const body = await response.json();
    if (body.error && body.error.message) return body.error.message;
    if (body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON: fall through to the status line */ }
  return `${response.status} ${response.statusText}`;
}

function say(text) {
  $("message").textContent = text;
}

function report(error) {
  say(error instanceof ApiError ? error.message : String(error));
}

// --- submitting ------------------------------------------------------------------------------

function readRequest() {
  const request = {
    prompt: $("prompt").value,
    num_steps: Number($("steps").value),
    cfg_scale: Number($("cfg").value),
  };
  const seed = $("seed").value.trim();
  if (seed !== "") {
    // Past 2**53 a JavaScript number is not the integer typed: it would name another video.
    if (!/^[0-9]+$/.test(seed) || !Number.isSafeInteger(Number(seed))) {
      throw new Error(`The seed must be a whole number from 0 to ${Number.MAX_SAFE_INTEGER}.`);
    }
    request.seed = Number(seed);
  }
  return request;
}

async function submit(event) {
  event.preventDefault();
  $("submit").disabled = true;
  try {
    const response = await api("v1/videos", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(readRequest()),
    });
    const job = await response.json();
    say(`Submitted ${job.id} (seed ${job.seed}).`);
    select(job.id);
    refreshList();
  } catch (error) {
    report(error);
  } finally {
    $("submit").disabled = false;
  }
}

// --- the selected job ------------------------------------------------------------------------

function select(id) {
  state.selected = id;
  clearTimeout(state.pollTimer);
  poll();
}

async function poll() {
  const id = state.selected;
  let job;
  try {
    job = await (await api(`v1/videos/${id}`)).json();
  } catch (error) {
    report(error);
    if (id === state.selected && mayPass(error)) state.pollTimer = setTimeout(poll, RETRY_MS);
    return;
  }
  if (id !== state.selected) return;  // another job was selected meanwhile
  showJob(job);
  if (!FINISHED.has(job.status)) {
    state.pollTimer = setTimeout(poll, POLL_MS);
  } else if (job.status === "completed" && state.shownVideo !== job.id) {
    await showVideo(job.id);
  }
}

// Whether a failed request may succeed if sent again: not a client error (unknown job, no key).
function mayPass(error) {
  return !(error instanceof ApiError) || error.status >= 500 || error.status === 429;
}

function describe(job) {
  if (job.status === "in_progress") return `in progress, ${job.progress}%`;
  if (job.error && job.error.message) return `${job.status}: ${job.error.message}`;
  return job.status.replace("_", " ");
}

function showJob(job) {
  $("current").hidden = false;
  $("current-id").textContent = job.id;
  $("current-prompt").textContent = job.prompt;
  $("current-status").textContent = describe(job);
  $("current").dataset.status = job.status;
  $("progress").value = job.status === "completed" ? 100 : job.progress;
  $("cancel").hidden = FINISHED.has(job.status);
  if (state.shownVideo !== null && state.shownVideo !== job.id) hideVideo();
}

function hideVideo() {
  const video = $("video");
  video.hidden = true;
  video.removeAttribute("src");
  video.load();
  if (state.videoUrl) URL.revokeObjectURL(state.videoUrl);
  state.videoUrl = null;
  state.shownVideo = null;
}

async function showVideo(id) {
  let blob;
  try {
    blob = await (await api(`v1/videos/${id}/content`)).blob();
  } catch (error) {
    report(error);
    return;
  }
  if (id !== state.selected) return;
  hideVideo();
  state.videoUrl = URL.createObjectURL(blob);
  state.shownVideo = id;
  const video = $("video");
  video.src = state.videoUrl;
  video.hidden = false;
  video.play().catch(() => { /* autoplay refused: the controls are there */ });
}

async function cancel(id) {
  try {
    await api(`v1/videos/${id}`, { method: "DELETE" });
  } catch (error) {
    report(error);
  }
  if (id === state.selected) select(id);
  refreshList();
}

// --- recent jobs -----------------------------------------------------------------------------

async function refreshList() {
  let body;
  try {
    body = await (await api(`v1/videos?limit=${LIST_LIMIT}`)).json();
  } catch (error) {
    report(error);
    return;
  }
  renderList(Array.isArray(body) ? body : body.data);
}

function cell(row, text) {
  const td = row.insertCell();
  td.textContent = text;  // prompts are client text: never HTML
  return td;
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function renderList(jobs) {
  const body = $("jobs");
  body.replaceChildren();
  for (const job of jobs.slice(0, LIST_LIMIT)) {
    const row = body.insertRow();
    row.dataset.jobId = job.id;
    row.dataset.status = job.status;
    if (job.id === state.selected) row.classList.add("selected");
    cell(row, job.id.slice(-8)).title = job.id;
    cell(row, job.prompt).className = "prompt";
    cell(row, job.seed);
    cell(row, job.num_steps);
    cell(row, describe(job)).className = "status " + job.status;
    const actions = row.insertCell();
    actions.append(button("Show", () => select(job.id)));
    if (!FINISHED.has(job.status)) actions.append(button("Cancel", () => cancel(job.id)));
  }
}

// --- start -----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", saveKey);
  $("key-forget").addEventListener("click", forgetKey);
  $("request-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", () => cancel(state.selected));
  showKeyState();
  refreshList();
  setInterval(refreshList, LIST_MS);
});
