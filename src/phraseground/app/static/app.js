// phraseground serve: the page. No framework, no CDN: everything here ships with the package.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { file: null, url: null, record: null, current: 0, jsonUrl: null };
  const MIN_SIDE = 384, MAX_SIDE = 900;

  function status(text, error) {
    $("status").textContent = text;
    $("status").className = error ? "error" : "";
  }

  function ready() {
    $("go").disabled = !(state.file && $("phrases").value.trim());
  }

  function setFile(file) {
    if (!file) return;
    state.file = file;
    if (state.url) URL.revokeObjectURL(state.url);
    state.url = URL.createObjectURL(file);
    $("drop-text").textContent = file.name + " (" + Math.round(file.size / 1024) + " KB)";
    status("");
    ready();
  }

  // the displayed size: small images upscaled by an integer factor, large ones fitted
  function displaySize(w, h) {
    const short = Math.min(w, h), long = Math.max(w, h);
    let f = 1;
    if (short < MIN_SIDE) f = Math.min(Math.ceil(MIN_SIDE / short), Math.max(1, Math.floor(MAX_SIDE / long)));
    else if (long > MAX_SIDE) f = MAX_SIDE / long;
    return [Math.round(w * f), Math.round(h * f)];
  }

  function phrasesOf(text) {
    return text.split("\n").map((s) => s.trim()).filter((s) => s.length > 0);
  }

  async function ground() {
    const phrases = phrasesOf($("phrases").value);
    if (!state.file || !phrases.length) return;
    const form = new FormData();
    form.append("image", state.file, state.file.name);
    for (const p of phrases) form.append("phrases", p);
    form.append("overlays", "true");
    if ($("model").value) form.append("model", $("model").value);
    $("go").disabled = true;
    status("grounding " + phrases.length + " phrase" + (phrases.length > 1 ? "s" : "") + " …");
    const t0 = performance.now();
    try {
      const resp = await fetch("/ground", { method: "POST", body: form });
      let body = null;
      try { body = await resp.json(); } catch (e) { body = { detail: resp.statusText }; }
      if (!resp.ok) {
        status("error " + resp.status + ": " + (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)), true);
        return;
      }
      state.record = body;
      status("done in " + Math.round(performance.now() - t0) + " ms");
      show(body);
    } catch (e) {
      status("the server did not answer: " + e, true);
    } finally {
      ready();
    }
  }

  function show(record) {
    $("result").hidden = false;
    const photo = $("photo");
    photo.onload = () => {
      const [w, h] = displaySize(record.width, record.height);
      const stage = $("stage");  // the layers (photo, heat, marks) all take the stage's box
      stage.style.width = w + "px";
      stage.style.height = h + "px";
      select(state.current < record.predictions.length ? state.current : 0);
    };
    if (photo.getAttribute("src") === state.url && photo.complete) photo.onload();
    else photo.src = state.url;
    $("marks").setAttribute("viewBox", "0 0 " + record.width + " " + record.height);
    const list = $("phrase-list");
    list.textContent = "";
    record.predictions.forEach((p, k) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.index = k;
      b.textContent = p.label;
      const s = document.createElement("span");
      s.className = "score";
      s.textContent = p.score.toFixed(3);
      b.appendChild(s);
      b.onclick = () => select(k);
      li.appendChild(b);
      list.appendChild(li);
    });
    $("json").textContent = JSON.stringify(record, null, 2);
    if (state.jsonUrl) URL.revokeObjectURL(state.jsonUrl);
    state.jsonUrl = URL.createObjectURL(new Blob([JSON.stringify(record, null, 2) + "\n"], { type: "application/json" }));
    const dl = $("download");
    dl.href = state.jsonUrl;
    dl.classList.remove("disabled");
    dl.removeAttribute("aria-disabled");
  }

  function select(k) {
    const record = state.record;
    const p = record.predictions[k];
    state.current = k;
    document.querySelectorAll("#phrase-list button").forEach((b) => b.classList.toggle("active", Number(b.dataset.index) === k));
    const heat = $("heat");
    if (p.overlay) { heat.src = p.overlay; heat.hidden = false; } else { heat.hidden = true; }
    const rect = $("pred-box"), dot = $("pred-point");
    if (p.box) {
      rect.setAttribute("x", p.box.xmin);
      rect.setAttribute("y", p.box.ymin);
      rect.setAttribute("width", p.box.xmax - p.box.xmin);
      rect.setAttribute("height", p.box.ymax - p.box.ymin);
      rect.style.display = "";
    } else {
      rect.style.display = "none";
    }
    if (p.point) {
      dot.setAttribute("cx", p.point.x);
      dot.setAttribute("cy", p.point.y);
      dot.setAttribute("r", Math.max(2, Math.min(record.width, record.height) / 45));
      dot.style.display = "";
    } else {
      dot.style.display = "none";
    }
    const dl = $("details");
    dl.textContent = "";
    const fmtBox = (b) => b ? [b.xmin, b.ymin, b.xmax, b.ymax].map((v) => v.toFixed(1)).join(", ") : "none";
    const rows = [
      ["phrase", p.label], ["score", p.score.toFixed(4)],
      ["point", p.point ? p.point.x.toFixed(1) + ", " + p.point.y.toFixed(1) : "none (all-zero heatmap)"],
      ["box (xyxy)", fmtBox(p.box)], ["level", p.level || "–"],
      ["unknown words", p.unknown_words.length ? p.unknown_words.join(", ") : "none"],
      ["image", record.width + " × " + record.height + " px"],
    ];
    if (p.concepts && p.concepts.length) {
      rows.push(["concepts", p.concepts.map((c) => (c.name || c.label || JSON.stringify(c)) +
        (c.similarity !== undefined ? " (" + Number(c.similarity).toFixed(2) + ")" : "")).join("; ")]);
    }
    for (const [a, b] of rows) {
      const dt = document.createElement("dt"); dt.textContent = a;
      const dd = document.createElement("dd"); dd.textContent = b;
      dl.appendChild(dt); dl.appendChild(dd);
    }
    document.body.dataset.shown = String(k);  // tests wait for this
  }

  async function loadModels() {
    try {
      const resp = await fetch("/models");
      const info = await resp.json();
      const sel = $("model");
      for (const m of info.models) {
        const o = document.createElement("option");
        o.value = m.name;
        o.textContent = m.name;
        o.title = m.description || "";
        if (m.name === info.default) o.selected = true;
        sel.appendChild(o);
      }
      const l = info.limits;
      $("limits").textContent = "Limits: " + l.max_upload_mb + " MB per image, " + (l.max_pixels / 1e6).toFixed(0) +
        " megapixels, " + l.max_phrases + " phrases of up to " + l.max_phrase_chars + " characters.";
    } catch (e) {
      status("cannot reach the server: " + e, true);
    }
  }

  const drop = $("drop");
  $("file").addEventListener("change", (e) => setFile(e.target.files[0]));
  ["dragenter", "dragover"].forEach((ev) => drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((ev) => drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => setFile(e.dataTransfer.files[0]));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
  $("phrases").addEventListener("input", ready);
  $("phrases").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) ground(); });
  $("go").addEventListener("click", ground);
  loadModels();
})();
