// The fdkd page: choose, drop or record an input, POST it to /v1/classify, show the answer.
// Plain JS, no dependencies. Audio that is not already a WAV at the model's sample rate (a
// recording, an MP3, a 44.1 kHz WAV) is decoded, mixed to mono and resampled in the browser,
// then sent as a float32 mono WAV at the model's rate, the form /v1/classify accepts.
"use strict";

const KEY_STORE = "fdkd.apiKey";
const EXTRA_RECORD_S = 0.5; // recorded beyond the model's clip; the loudest clip-long window is sent
let info = null; // GET /v1/model
let busy = false;

const $ = (id) => document.getElementById(id);

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { Authorization: "Bearer " + key } : {};
}

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = kind || "";
  el.hidden = !text;
}

function unauthorized() {
  const had = Boolean(sessionStorage.getItem(KEY_STORE));
  setStatus(had ? "401: the server rejected this API key. Check it and press \u201cUse key\u201d again."
                : "401: this server needs an API key. Enter it above and press \u201cUse key\u201d.", "error");
  $("api-key").focus();
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && typeof body.error === "string") return body.error;
  } catch (e) { /* not JSON */ }
  return resp.statusText || "request failed";
}

// ---- model info ----------------------------------------------------------------------------

async function loadInfo() {
  let resp;
  try {
    resp = await fetch("v1/model", { headers: authHeaders(), cache: "no-store" });
  } catch (e) {
    setStatus("Cannot reach the server: " + e.message, "error");
    return;
  }
  if (resp.status === 401) {
    info = null;
    $("model-line").textContent = "model: hidden until a valid API key is given";
    unauthorized();
    return;
  }
  if (!resp.ok) {
    setStatus(resp.status + ": " + (await errorText(resp)), "error");
    if (resp.status === 503) setTimeout(loadInfo, 2000);
    return;
  }
  info = await resp.json();
  const pre = info.preprocessing || {};
  const audio = info.modality === "audio";
  const name = document.createElement("strong");
  name.textContent = info.name;
  $("model-line").replaceChildren("model ", name, ` \u00b7 version ${info.version} \u00b7 ${info.artifact} \u00b7 ` +
    `${info.modality} input \u00b7 ${info.class_names.length} classes`);
  showValidation(info);
  $("drop-title").textContent = audio ? "Drop a WAV or other audio file here" : "Drop an image here";
  $("file").accept = audio ? "audio/*,.wav" : "image/*";
  $("record").hidden = !audio;
  $("record-hint").hidden = !audio;
  if (audio) {
    $("record-hint").textContent = `records ${(clipSeconds() + EXTRA_RECORD_S).toFixed(1)} s, ` +
      `sent as ${pre.sample_rate / 1000} kHz mono WAV`;
  }
  setStatus("", "");
}

// --allow-unvalidated is never silent: a banner says so, and why when this artifact did not pass validation
function showValidation(m) {
  const el = $("unvalidated");
  if (!m.allow_unvalidated && m.validated !== false) {
    el.hidden = true;
    return;
  }
  el.textContent = m.validated === false
    ? "Warning: this server runs with --allow-unvalidated and this model did NOT pass validation in the mode " +
      "it runs in; its answers are not vouched for. " + (m.warnings || []).join(" ")
    : "Warning: this server runs with --allow-unvalidated (this model did pass its validation).";
  el.className = m.validated === false ? "warning bad" : "warning";
  el.hidden = false;
}

function clipSeconds() {
  const pre = info.preprocessing;
  return pre.clip_samples / pre.sample_rate;
}

// ---- audio: decode, mono, resample, WAV ------------------------------------------------------

function wavSampleRate(bytes) {
  // The sample rate of a RIFF/WAVE file's fmt chunk, or null when it is not one.
  const v = new DataView(bytes);
  const tag = (o) => String.fromCharCode(v.getUint8(o), v.getUint8(o + 1), v.getUint8(o + 2), v.getUint8(o + 3));
  if (bytes.byteLength < 12 || tag(0) !== "RIFF" || tag(8) !== "WAVE") return null;
  for (let pos = 12; pos + 8 <= bytes.byteLength;) {
    const size = v.getUint32(pos + 4, true);
    if (tag(pos) === "fmt " && pos + 16 <= bytes.byteLength) return v.getUint32(pos + 12, true);
    pos += 8 + size + (size % 2);
  }
  return null;
}

async function toMono(bytes, rate) {
  // Any audio the browser decodes -> Float32Array mono at `rate` (down-mix and resampling by Web Audio).
  const decoded = await new OfflineAudioContext(1, 1, rate).decodeAudioData(bytes.slice(0));
  const frames = Math.max(1, Math.ceil(decoded.duration * rate));
  const ctx = new OfflineAudioContext(1, frames, rate);
  const src = ctx.createBufferSource();
  src.buffer = decoded;
  src.connect(ctx.destination);
  src.start();
  return (await ctx.startRendering()).getChannelData(0);
}

function loudestWindow(samples, length) {
  // The `length`-long window with the most energy (10 ms steps): a recording's word, not its lead-in.
  if (samples.length <= length) return samples;
  const step = Math.max(1, Math.round(length / 100));
  let best = 0, bestEnergy = -1;
  for (let start = 0; start + length <= samples.length; start += step) {
    let e = 0;
    for (let i = start; i < start + length; i += 4) e += samples[i] * samples[i];
    if (e > bestEnergy) { bestEnergy = e; best = start; }
  }
  return samples.subarray(best, best + length);
}

function floatWav(samples, rate) {
  // Mono IEEE float32 WAV (format 3): no requantisation of what Web Audio produced.
  const buf = new ArrayBuffer(44 + samples.length * 4);
  const v = new DataView(buf);
  const put = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
  put(0, "RIFF"); v.setUint32(4, 36 + samples.length * 4, true); put(8, "WAVE");
  put(12, "fmt "); v.setUint32(16, 16, true); v.setUint16(20, 3, true); v.setUint16(22, 1, true);
  v.setUint32(24, rate, true); v.setUint32(28, rate * 4, true); v.setUint16(32, 4, true); v.setUint16(34, 32, true);
  put(36, "data"); v.setUint32(40, samples.length * 4, true);
  new Float32Array(buf, 44).set(samples);
  return new Blob([buf], { type: "audio/wav" });
}

async function audioBody(file, fromMicrophone) {
  // A WAV already at the model's rate goes as it is (the server reads every WAV format); anything else is converted.
  const rate = info.preprocessing.sample_rate;
  const bytes = await file.arrayBuffer();
  if (!fromMicrophone && wavSampleRate(bytes) === rate) return { body: file, note: "sent as uploaded" };
  let mono = await toMono(bytes, rate);
  if (fromMicrophone) mono = loudestWindow(mono, info.preprocessing.clip_samples);
  return { body: floatWav(mono, rate), note: `converted in the browser to ${rate / 1000} kHz mono WAV` };
}

// ---- classify --------------------------------------------------------------------------------

function showPreview(file) {
  const box = $("preview");
  box.replaceChildren();
  const url = URL.createObjectURL(file);
  const el = document.createElement(file.type.startsWith("image/") ? "img" : "audio");
  if (el.tagName === "AUDIO") el.controls = true;
  else el.alt = "the uploaded image";
  el.src = url;
  box.append(el);
}

async function classify(file, label, fromMicrophone) {
  if (busy) return;
  if (!info) {
    await loadInfo();
    if (!info) return;
  }
  busy = true;
  $("result").hidden = true;
  setStatus(`Classifying ${label}\u2026`, "");
  try {
    let body = file, note = "sent as uploaded";
    if (info.modality === "audio") ({ body, note } = await audioBody(file, fromMicrophone));
    showPreview(body);
    const started = performance.now();
    const resp = await fetch("v1/classify", {
      method: "POST", body,
      headers: { ...authHeaders(), "Content-Type": body.type || "application/octet-stream" },
    });
    const ms = performance.now() - started;
    if (resp.status === 401) return unauthorized();
    if (!resp.ok) return setStatus(`${resp.status}: ${await errorText(resp)}`, "error");
    showResult(await resp.json(), ms, `${label} (${(body.size / 1024).toFixed(1)} KiB, ${note})`);
    setStatus("", "");
  } catch (e) {
    setStatus(`Could not classify ${label}: ${e.message}`, "error");
  } finally {
    busy = false;
  }
}

function showResult(r, ms, inputText) {
  const probs = r.probabilities;
  const best = r.class_name;
  $("pred-class").textContent = best;
  $("pred-conf").textContent = (100 * probs[best]).toFixed(1) + " %";
  $("latency").textContent = `latency ${ms.toFixed(1)} ms (round trip)`;
  const bars = $("bars");
  bars.replaceChildren();
  for (const [name, p] of Object.entries(probs)) {
    const row = document.createElement("div");
    row.className = "bar-row" + (name === best ? " best" : "");
    row.dataset.className = name;
    row.dataset.probability = String(p);
    const lab = document.createElement("div");
    lab.className = "bar-label";
    lab.textContent = name;
    const track = document.createElement("div");
    track.className = "bar-track";
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = (100 * p).toFixed(2) + "%";
    track.append(fill);
    const val = document.createElement("div");
    val.className = "bar-value";
    val.textContent = (100 * p).toFixed(1) + " %";
    row.append(lab, track, val);
    bars.append(row);
  }
  $("meta-model").textContent = r.model ?? info.name;
  $("meta-artifact").textContent = r.artifact ?? info.artifact;
  $("meta-input").textContent = inputText;
  $("result").hidden = false;
}

// ---- microphone ------------------------------------------------------------------------------

async function record() {
  if (busy || !info) return;
  const button = $("record");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
  } catch (e) {
    return setStatus("No microphone: " + e.message, "error");
  }
  const chunks = [];
  const rec = new MediaRecorder(stream);
  rec.ondataavailable = (ev) => { if (ev.data.size) chunks.push(ev.data); };
  const stopped = new Promise((resolve) => { rec.onstop = resolve; });
  const seconds = clipSeconds() + EXTRA_RECORD_S;
  button.disabled = true;
  button.classList.add("recording");
  setStatus(`Recording ${seconds.toFixed(1)} s\u2026 speak now`, "");
  rec.start();
  setTimeout(() => rec.stop(), seconds * 1000);
  await stopped;
  stream.getTracks().forEach((t) => t.stop());
  button.disabled = false;
  button.classList.remove("recording");
  const blob = new Blob(chunks, { type: rec.mimeType || "audio/webm" });
  await classify(blob, "the recording", true);
}

// ---- wiring ----------------------------------------------------------------------------------

function init() {
  const keyInput = $("api-key");
  keyInput.value = sessionStorage.getItem(KEY_STORE) || "";
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = keyInput.value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    setStatus("", "");
    loadInfo();
  });
  $("key-clear").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    keyInput.value = "";
    loadInfo();
  });
  $("file").addEventListener("change", (ev) => {
    const f = ev.target.files[0];
    ev.target.value = ""; // choosing the same file again (say, after entering the key) fires again
    if (f) classify(f, f.name, false);
  });
  const drop = $("drop");
  drop.addEventListener("click", (ev) => { if (ev.target !== $("file")) $("file").click(); });
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") $("file").click(); });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    const f = ev.dataTransfer.files[0];
    if (f) classify(f, f.name, false);
  });
  $("record").addEventListener("click", record);
  loadInfo();
}

document.addEventListener("DOMContentLoaded", init);
