// The unitrans demo page: plain browser JavaScript calling the server's public API
// (/readyz, /adapters, /caption, /vqa, /retrieve). Images travel as base64 in JSON.
"use strict";

const TASK_OF_ADAPTER = { caption: "caption", vqa: "vqa", retrieve: "retrieve" };
const state = {
  task: "caption",
  images: [],      // [{id, b64, url}]: the examples, then images the user added
  selected: null,  // id of the image for caption / vqa
  adapters: [],    // GET /adapters .adapters
};

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function headers(json) {
  const h = {};
  if (json) h["content-type"] = "application/json";
  const key = $("#api-key").value.trim();
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

// One API call; a non-2xx answer throws "<status> <type>: <message>" from the error body.
async function api(method, path, body) {
  const r = await fetch(path, { method, headers: headers(body !== undefined),
                                body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null;
  try { data = JSON.parse(text); } catch (_) { /* not JSON: a plain 500 */ }
  if (!r.ok) {
    const e = (data && data.error) || { type: `http_${r.status}`, message: text };
    throw new Error(`${r.status} ${e.type}: ${e.message}`);
  }
  return data;
}

function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

// -- images -------------------------------------------------------------------------
async function addImage(id, blob, select) {
  let unique = id, n = 2;
  while (state.images.some((im) => im.id === unique)) unique = `${id} (${n++})`;
  state.images.push({ id: unique, b64: await blobToBase64(blob), url: URL.createObjectURL(blob) });
  if (select || !state.selected) state.selected = unique;
  renderImages();
}

function renderImages() {
  const box = $("#examples");
  box.replaceChildren(...state.images.map((im) => {
    const button = el("button", { type: "button", class: "thumb", "data-id": im.id, title: im.id },
                      el("img", { src: im.url, alt: im.id }), el("span", { text: im.id }));
    if (state.task !== "retrieve" && im.id === state.selected) button.classList.add("selected");
    button.addEventListener("click", () => { state.selected = im.id; renderImages(); });
    return button;
  }));
}

async function loadExamples() {
  const { examples } = await api("GET", "/demo/examples");
  for (const ex of examples) {
    const r = await fetch(ex.url);
    await addImage(ex.name, await r.blob(), false);
  }
}

async function addFiles(files) {
  for (const f of files) {
    if (f.type.startsWith("image/")) await addImage(f.name, f, true);
  }
}

// -- adapters -----------------------------------------------------------------------
async function refreshAdapters() {
  const data = await api("GET", "/adapters");
  state.adapters = data.adapters;
  const rows = data.adapters.map((a) => el("tr", { "data-name": a.name },
    ...[a.name, a.kind ?? "", a.task ?? a.error ?? "", a.rank ?? "", (a.trainable_params ?? "").toLocaleString("en"),
        (a.bytes ?? "").toLocaleString("en"), a.loaded ? "yes" : "no", a.pinned ? "yes" : "no",
        a.default_for.join(", ")].map((v) => el("td", { text: String(v) }))));
  $("#adapter-table tbody").replaceChildren(...rows);
}

function renderAdapterChoices() {
  const task = TASK_OF_ADAPTER[state.task];
  const choices = [{ value: "", label: "task default" }, { value: "none", label: "none (frozen backbone)" },
    ...state.adapters.filter((a) => a.task === task).map((a) => ({ value: a.name, label: a.name }))];
  $("#adapter-choices").replaceChildren(...choices.map((c, i) => el("label", {},
    el("input", { type: "checkbox", name: "adapter", value: c.value, ...(i === 0 ? { checked: "" } : {}) }),
    ` ${c.label}`)));
}

function chosenAdapters() {
  const picked = [...document.querySelectorAll("input[name=adapter]:checked")].map((i) => i.value);
  return picked.length ? picked : [""];
}

// -- tasks --------------------------------------------------------------------------
function setTask(task) {
  state.task = task;
  for (const t of ["caption", "vqa", "retrieve"]) {
    for (const node of document.querySelectorAll(`.for-${t}`)) node.hidden = t !== task;
  }
  $("#image-legend").textContent = task === "retrieve" ? "2. Gallery (add your own images)" : "2. Image";
  $("#gallery-note").hidden = task !== "retrieve";
  renderImages();
  renderAdapterChoices();
}

async function runOne(adapter, adapters) {
  // `adapters`: one fan-out request for several named adapters (the image decoded once)
  const body = adapters ? { adapters } : adapter ? { adapter } : {};
  const image = state.images.find((im) => im.id === state.selected);
  if (state.task === "caption") return api("POST", "/caption", { image: image.b64, ...body });
  if (state.task === "vqa") {
    const candidates = $("#candidates").value.split(",").map((s) => s.trim()).filter(Boolean);
    return api("POST", "/vqa", { image: image.b64, question: $("#question").value,
                                 ...(candidates.length ? { candidates } : {}), ...body });
  }
  return api("POST", "/retrieve", { text: $("#query").value, top_k: state.images.length,
                                    images: state.images.map((im) => ({ id: im.id, image: im.b64 })), ...body });
}

function scoreTable(scores) {
  // log-likelihoods, and each candidate's share of the probability among the candidates
  const entries = Object.entries(scores).sort((a, b) => b[1] - a[1]);
  const top = entries[0][1];
  const total = entries.reduce((s, [, v]) => s + Math.exp(v - top), 0);
  return el("table", { class: "scores" },
    el("tr", {}, el("th", { text: "candidate" }), el("th", { text: "log-likelihood" }), el("th", { text: "share" })),
    ...entries.map(([cand, v]) => {
      const share = Math.exp(v - top) / total;
      return el("tr", {}, el("td", { text: cand }), el("td", { text: v.toFixed(3) }),
                el("td", {}, el("span", { class: "bar", style: `width:${Math.round(share * 100)}px` }),
                   ` ${(share * 100).toFixed(0)}%`));
    }));
}

function resultCard(adapter, out) {
  const card = el("article", { class: "result", "data-adapter": adapter || "default" },
                  el("h3", { text: adapter ? `adapter ${out.adapter}` : `task default → ${out.adapter}` }));
  if (state.task === "caption") card.append(el("p", { class: "caption", text: out.caption }));
  if (state.task === "vqa") {
    card.append(el("p", { class: "answer" }, "answer: ", el("strong", { text: out.answer })));
    if (out.scores) card.append(scoreTable(out.scores));
  }
  if (state.task === "retrieve") {
    const urls = Object.fromEntries(state.images.map((im) => [im.id, im.url]));
    card.append(el("ol", { class: "ranking" }, ...out.results.map((r) => el("li", {},
      el("img", { src: urls[r.id], alt: r.id }),
      el("span", { class: "id", text: r.id }), " ",
      el("span", { class: "score", text: `score ${r.score.toFixed(3)} · itc ${r.itc.toFixed(3)}` })))));
  }
  return card;
}

async function run() {
  showError("");
  const results = $("#results");
  if (state.task !== "retrieve" && !state.selected) return showError("Choose or drop an image first.");
  results.dataset.state = "running";
  results.replaceChildren(el("p", { class: "hint", text: "running…" }));
  const cards = [];
  try {
    const chosen = chosenAdapters();
    if (chosen.length > 1 && !chosen.includes("")) {  // named adapters only: one fan-out request
      const out = await runOne(null, chosen);
      out.per_adapter.forEach((o, i) => cards.push(resultCard(chosen[i], o)));
    } else {
      for (const adapter of chosen) cards.push(resultCard(adapter, await runOne(adapter)));
    }
    if (state.task !== "retrieve") {
      const im = state.images.find((i) => i.id === state.selected);
      results.replaceChildren(el("figure", { class: "input" }, el("img", { src: im.url, alt: im.id }),
                                 el("figcaption", { text: im.id })), ...cards);
    } else {
      results.replaceChildren(...cards);
    }
    results.dataset.state = "done";
  } catch (err) {
    results.replaceChildren(...cards);
    results.dataset.state = "error";
    showError(err.message);
  }
  refreshAdapters().catch(() => {});  // a request may have loaded an adapter
}

// The adapter table and choices; a server with an API key answers 401 until one is typed in.
async function refreshAdapterViews() {
  try {
    await refreshAdapters();
    renderAdapterChoices();
    showError("");
  } catch (err) {
    showError(err.message.startsWith("401") ? `${err.message} (type the server's API key below Run)` : err.message);
  }
}

async function start() {
  for (const radio of document.querySelectorAll("input[name=task]")) {
    radio.addEventListener("change", () => setTask(radio.value));
  }
  $("#run").addEventListener("click", run);
  $("#file").addEventListener("change", (e) => addFiles(e.target.files));
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); });
  $("#api-key").addEventListener("change", refreshAdapterViews);
  setTask(document.querySelector("input[name=task]:checked").value);
  try {
    const ready = await api("GET", "/readyz");  // /readyz, /healthz and the pages need no key
    $("#status").textContent = `Backbone ${ready.backbone} (fingerprint ${ready.fingerprint}), tasks: ${ready.tasks.join(", ")}.`;
    await loadExamples();
    await refreshAdapterViews();
    document.body.dataset.ready = "yes";
  } catch (err) {
    $("#status").textContent = "not ready";
    showError(err.message);
  }
}

start();
