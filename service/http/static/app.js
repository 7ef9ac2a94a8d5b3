// imgserve's page: pick / drop / paste images, POST each to /classify, render top-k bars, timings and errors.
// Plain JS, no framework, nothing fetched from anywhere but this service.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const modelSel = $("model"), topK = $("top_k"), apiKey = $("api_key"), drop = $("drop"), input = $("files");
  const results = $("results"), status = $("status"), warning = $("warning");
  const CONCURRENCY = 4;
  let models = [];

  apiKey.value = sessionStorage.getItem("imgserve.apiKey") || "";
  apiKey.addEventListener("change", () => { sessionStorage.setItem("imgserve.apiKey", apiKey.value); loadModels(); });

  function headers() {
    return apiKey.value ? { "X-API-Key": apiKey.value } : {};
  }

  // The service's own error message: {"error": {"code", "message"}} (or the v2 {"error": "..."}).
  async function errorText(resp) {
    let text = "";
    try {
      const body = await resp.json();
      const e = body && body.error;
      text = typeof e === "string" ? e : e ? `${e.message} (${e.code})` : JSON.stringify(body);
    } catch (_) {
      text = resp.statusText;
    }
    return `HTTP ${resp.status}: ${text}`;
  }

  function el(tag, attrs, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") n.className = v; else if (k === "text") n.textContent = v; else n.setAttribute(k, v);
    }
    for (const c of children) if (c) n.append(c);
    return n;
  }

  const advice = window.imgserveAdvice;  // advice.js: service/advice.py's rules
  const weights = () => Object.fromEntries(models.map((m) => [m.name, m.weights]));

  function showWarning() {
    const m = models.find((x) => x.name === modelSel.value);
    const text = m ? advice.randomWeightsWarning(m.name, weights()) : null;
    if (text) {
      const [before, other] = text.split("?model=");
      warning.replaceChildren(`Model ${m.name}: ${before}`);
      if (other) {  // a link that switches the page to the model with trained weights
        const link = el("a", { href: `?model=${encodeURIComponent(other)}`, id: "use-trained", text: `?model=${other}` });
        link.addEventListener("click", (e) => { e.preventDefault(); modelSel.value = other; showWarning(); });
        warning.append(link);
      }
      warning.hidden = false;
    } else {
      warning.hidden = true;
    }
  }

  async function loadModels() {
    try {
      const resp = await fetch("/models", { headers: headers() });
      if (!resp.ok) throw new Error(await errorText(resp));
      const listing = await resp.json();
      models = listing.models || [];
      modelSel.replaceChildren(...models.map((m) => {
        const tag = m.weights === "random" ? " — random weights" : m.state && m.state !== "ready" ? ` — ${m.state}` : "";
        return el("option", { value: m.name, text: `${m.name}${m.versions && m.versions.length ? " v" + m.versions.at(-1) : ""}${tag}` });
      }));
      if (!models.length) modelSel.replaceChildren(el("option", { value: "", text: "(no models served)" }));
      status.textContent = "";
      // ?model=NAME in the page's address wins; else the service's default (when /models names it), else the
      // first; a random-weights choice gives way to a model with trained weights, and the page says so
      const asked = new URLSearchParams(location.search).get("model");
      const dflt = listing.default_model || (models.find((m) => m.default === true) || models[0] || {}).name;
      const initial = models.some((m) => m.name === asked) ? asked : dflt;
      const chosen = asked && initial === asked ? asked : advice.preferredModel(initial, weights());
      if (chosen) modelSel.value = chosen;
      if (chosen && chosen !== initial) {
        status.textContent = `Preselected ${chosen}: it has trained weights, ${initial} has random ones.`;
      }
    } catch (e) {
      modelSel.replaceChildren(el("option", { value: "", text: "(default model)" }));
      status.textContent = `Could not list models: ${e.message}`;
    }
    showWarning();
  }
  modelSel.addEventListener("change", showWarning);

  function card(file) {
    const img = el("img", { alt: `thumbnail of ${file.name}` });
    img.addEventListener("error", () => img.classList.add("broken"), { once: true });
    img.src = URL.createObjectURL(file);
    const body = el("div", { class: "body" }, el("h2", { text: file.name, title: file.name }),
      el("p", { class: "pending", text: "classifying…" }));
    const li = el("li", { class: "card", "data-filename": file.name, "aria-busy": "true" }, img, body);
    results.prepend(li);
    return { li, body };
  }

  function render(li, body, data, timing) {
    const r = data.results[0];
    const preds = el("ol", { class: "preds", "aria-label": `top ${r.predictions.length} predictions` });
    for (const p of r.predictions) {
      const pct = (p.score * 100).toFixed(1);
      const fill = el("span", { class: "fill", "aria-hidden": "true" });
      fill.style.width = `${Math.max(0.5, p.score * 100)}%`;
      preds.append(el("li", { class: "pred", "data-index": String(p.index), "data-score": String(p.score) }, fill,
        el("span", { class: "label", text: p.label, title: `class ${p.index}` }),
        el("span", { class: "score", text: `${pct}%` })));
    }
    const stages = (timing || "").split(",").map((s) => s.trim()).filter(Boolean).map((s) => {
      const [name, ...params] = s.split(";");
      const dur = params.map((x) => x.trim()).find((x) => x.startsWith("dur="));
      return dur ? `${name} ${Number(dur.slice(4)).toFixed(1)} ms` : name;
    });
    const meta = `${data.model} v${data.version}` + (stages.length ? ` · ${stages.join(" · ")}` : "");
    body.replaceChildren(body.firstChild, preds, el("p", { class: "timing", text: meta }));
    if (data.warning) {
      warning.textContent = `Warning from the service: ${data.warning}`;
      warning.hidden = false;
    }
    li.removeAttribute("aria-busy");
  }

  async function classify(file) {
    const { li, body } = card(file);
    const params = new URLSearchParams({ top_k: topK.value || "5" });
    if (modelSel.value) params.set("model", modelSel.value);
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const resp = await fetch(`/classify?${params}`, { method: "POST", body: form, headers: headers() });
      if (!resp.ok) throw new Error(await errorText(resp));
      render(li, body, await resp.json(), resp.headers.get("server-timing"));
    } catch (e) {
      const msg = e instanceof TypeError ? `could not reach the service: ${e.message}` : e.message;
      body.replaceChildren(body.firstChild, el("p", { class: "error", role: "alert", text: msg }));
      li.classList.add("failed");
      li.removeAttribute("aria-busy");
    }
  }

  async function classifyAll(files) {
    files = Array.from(files).filter((f) => f && f.size !== undefined);
    if (!files.length) return;
    status.textContent = `Classifying ${files.length} image${files.length > 1 ? "s" : ""}…`;
    let next = 0;
    const worker = async () => { while (next < files.length) await classify(files[next++]); };
    await Promise.all(Array.from({ length: Math.min(CONCURRENCY, files.length) }, worker));
    const failed = results.querySelectorAll(".card.failed").length;
    status.textContent = `Done: ${files.length} image${files.length > 1 ? "s" : ""}` + (failed ? `, ${failed} failed so far` : "") + ".";
  }

  input.addEventListener("change", () => { classifyAll(input.files); input.value = ""; });
  drop.addEventListener("click", (e) => { if (e.target.tagName !== "LABEL" && e.target !== input) input.click(); });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); classifyAll(e.dataTransfer.files); });
  document.addEventListener("paste", (e) => {
    const files = Array.from(e.clipboardData ? e.clipboardData.items : [])
      .filter((i) => i.kind === "file").map((i, n) => {
        const f = i.getAsFile();
        return f && (f.name && f.name !== "image.png" ? f : new File([f], `pasted-${n + 1}.${(f.type.split("/")[1] || "png")}`, { type: f.type }));
      });
    if (files.length) { e.preventDefault(); classifyAll(files); }
  });
  loadModels();
})();
