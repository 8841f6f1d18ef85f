// transferlab web page: upload images to POST /predict and draw the top-k classes as bars (or the box).
"use strict";

const $ = (id) => document.getElementById(id);
let maxFiles = 16;
const cardFiles = new Map(); // result card -> its uploaded File (for heatmaps requested later)

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function loadModel() {
  const res = await fetch("/model");
  const info = await res.json();
  $("model-name").textContent = `${info.backbone} (${info.strategy || "trained"}), ${info.num_classes} classes`;
  const test = (info.metrics && info.metrics.test) || {};
  const acc = typeof test.accuracy === "number" ? `test accuracy ${(100 * test.accuracy).toFixed(1)}% \u00b7 ` : "";
  $("model-meta").textContent = `${acc}runtime ${info.runtime} \u00b7 classes: ${info.classes.join(", ")}`;
  maxFiles = info.limits.max_files;
  const rep = info.report || {};
  if (rep.html || (rep.figures && rep.figures.length)) {
    $("report").hidden = false;
    if (rep.html) {
      const a = el("a", { href: rep.html, target: "_blank", id: "report-html" }, "Open the full report (learning curves, confusion matrix, mistakes)");
      $("report-link").appendChild(a);
    }
    for (const src of rep.figures || []) {
      const name = src.split("/").pop();
      $("report-figures").appendChild(el("img", { src, alt: name, title: name, loading: "lazy" }));
    }
  }
}

function renderBox(card, file, url, prediction) {
  // a localization model: the image with the predicted box drawn over it (pixels of the upload)
  const [x0, y0, x1, y1] = prediction.box;
  const pct = (v, total) => `${(100 * v / total).toFixed(2)}%`;
  const frame = el("div", { class: "frame" });
  frame.style.position = "relative";
  frame.appendChild(el("img", { src: url, alt: file.name }));
  const box = el("div", { class: "box", "data-box": prediction.box.join(",") });
  Object.assign(box.style, { position: "absolute", border: "2px solid #e61e1e", left: pct(x0, prediction.width),
    top: pct(y0, prediction.height), width: pct(x1 - x0, prediction.width), height: pct(y1 - y0, prediction.height) });
  frame.appendChild(box);
  card.appendChild(frame);
  const what = prediction.class ? ` \u2014 ${prediction.class} ${(100 * prediction.probability).toFixed(1)}%` : "";
  card.appendChild(el("h3", {}, `${file.name}: box ${prediction.box.map((v) => v.toFixed(0)).join(", ")}${what}`));
  return card;
}

function renderResult(file, url, prediction) {
  if (prediction.box) {
    return renderBox(el("div", { class: "result", "data-file": file.name }), file, url, prediction);
  }
  if (prediction.labels) {  // multi-label: every label's probability, those above their threshold first
    const ranked = Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1]);
    prediction = { ...prediction, top: ranked.map(([label, probability]) => ({ label, probability })) };
  }
  const card = el("div", { class: "result", "data-file": file.name, "data-top1": prediction.top[0].label });
  card.appendChild(el("img", { src: url, alt: file.name, class: "photo" }));
  card.appendChild(el("img", { alt: `heatmap of ${file.name}`, class: "overlay" }));
  card.classList.toggle("show-heatmap", $("heatmap").checked);
  cardFiles.set(card, file);
  card.appendChild(el("h3", {}, `${file.name} (${prediction.width}\u00d7${prediction.height})`));
  const bars = el("div", { class: "bars" });
  for (const t of prediction.top) {
    const row = el("div", { class: "bar", "data-label": t.label });
    const track = el("div", { class: "track" });
    const fill = el("div", { class: "fill" });
    fill.style.width = `${(100 * t.probability).toFixed(1)}%`;
    track.appendChild(fill);
    track.appendChild(el("span", { class: "label" }, t.label));
    row.appendChild(track);
    row.appendChild(el("span", { class: "pct" }, `${(100 * t.probability).toFixed(1)}%`));
    bars.appendChild(row);
  }
  card.appendChild(bars);
  return card;
}

async function classify(fileList) {
  const files = Array.from(fileList).filter((f) => f.size > 0);
  if (!files.length) { setStatus("No non-empty files to classify.", true); return; }
  const chunks = [];
  for (let i = 0; i < files.length; i += maxFiles) chunks.push(files.slice(i, i + maxFiles));
  setStatus(`Classifying ${files.length} image${files.length > 1 ? "s" : ""}\u2026`);
  const top = $("top-k").value;
  let done = 0;
  for (const chunk of chunks) {
    const form = new FormData();
    for (const f of chunk) form.append("files", f, f.name);
    let res, body;
    try {
      res = await fetch(`/predict?top=${encodeURIComponent(top)}`, { method: "POST", body: form });
      body = await res.json();
    } catch (err) {
      setStatus(`Request failed: ${err}`, true);
      return;
    }
    if (!res.ok) {
      setStatus(`Error ${res.status} (${body.error}): ${body.message}`, true);
      return;
    }
    const cards = body.predictions.map((p, i) => renderResult(chunk[i], URL.createObjectURL(chunk[i]), p));
    cards.forEach((c) => $("results").prepend(c));
    if ($("heatmap").checked) await explainCards(cards);
    done += chunk.length;
    setStatus(`Classified ${done} of ${files.length} in ${body.elapsed_ms.toFixed(0)} ms (last batch).`);
  }
}

// POST /explain for the cards without an overlay yet; the overlay replaces the photo while the toggle is on.
async function explainCards(cards) {
  const pending = cards.filter((c) => !c.dataset.heatmap);
  for (let i = 0; i < pending.length; i += maxFiles) {
    const chunk = pending.slice(i, i + maxFiles);
    const form = new FormData();
    for (const c of chunk) form.append("files", cardFiles.get(c), cardFiles.get(c).name);
    let res, body;
    try {
      res = await fetch("/explain", { method: "POST", body: form });
      body = await res.json();
    } catch (err) {
      setStatus(`Heatmap request failed: ${err}`, true);
      return;
    }
    if (!res.ok) {
      setStatus(`Heatmap error ${res.status} (${body.error}): ${body.message}`, true);
      return;
    }
    body.explanations.forEach((e, k) => {
      const card = chunk[k];
      card.querySelector("img.overlay").src = e.overlay;
      card.dataset.heatmap = e.target;
      card.querySelector("h3").after(el("p", { class: "heat-note" }, `${e.method} heatmap of ${e.target}`));
    });
  }
}

function applyHeatmapToggle() {
  const on = $("heatmap").checked;
  const cards = Array.from(document.querySelectorAll("#results .result"));
  cards.forEach((c) => c.classList.toggle("show-heatmap", on));
  if (on) explainCards(cards);
}

function setup() {
  $("heatmap").addEventListener("change", applyHeatmapToggle);
  const drop = $("drop");
  const input = $("file-input");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
  input.addEventListener("change", () => { classify(input.files); input.value = ""; });
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => classify(e.dataTransfer.files));
  loadModel().catch((err) => setStatus(`Could not load /model: ${err}`, true));
}

setup();
