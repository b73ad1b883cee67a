// The page of `multibox serve` (docs/serve.md): one image -> POST /v1/detect at the service's lowest threshold,
// then the confidence slider filters and redraws locally (no new request). No external files, no build step.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const view = $("view"), ctx = view.getContext("2d"), status = $("status"), count = $("count");
  const slider = $("conf"), modelSelect = $("model"), video = $("video");
  const state = { image: null, result: null, name: "image", minConf: 0.05, stream: null };
  window.multibox = state; // read by the end-to-end test (tests/test_serve_browser.py)

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const key = $("api-key").value.trim();
    if (key) h["X-API-Key"] = key;
    return h;
  }

  function setStatus(text, kind) {
    status.textContent = text;
    status.dataset.state = kind;
  }

  function threshold() { return Number(slider.value); }

  function kept() {
    if (!state.result) return [];
    const t = threshold();
    return state.result.annotations.filter((a) => a.score >= t);
  }

  function color(categoryId) { return `hsl(${(categoryId * 137.5 + 200) % 360} 85% 45%)`; }

  function draw() {
    $("conf-value").textContent = threshold().toFixed(2);
    if (!state.image) return;
    view.width = state.image.naturalWidth || state.image.width;
    view.height = state.image.naturalHeight || state.image.height;
    ctx.drawImage(state.image, 0, 0, view.width, view.height);
    const boxes = kept();
    const line = Math.max(2, Math.round(Math.min(view.width, view.height) / 250));
    ctx.lineWidth = line;
    ctx.font = `${Math.max(12, line * 7)}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    let drawn = 0;
    for (const a of boxes) {
      const [x, y, w, h] = a.bbox;
      ctx.strokeStyle = color(a.category_id);
      ctx.strokeRect(x, y, w, h);
      const label = `${a.category_name} ${a.score.toFixed(2)}`;
      const tw = ctx.measureText(label).width + 2 * line, th = line * 7 + 2 * line;
      const ty = y - th >= 0 ? y - th : y;
      ctx.fillStyle = color(a.category_id);
      ctx.fillRect(x, ty, tw, th);
      ctx.fillStyle = "#fff";
      ctx.fillText(label, x + line, ty + line);
      drawn += 1;
    }
    view.dataset.drawn = String(drawn);
    count.dataset.boxes = String(drawn);
    count.textContent = state.result ? `${drawn} of ${state.result.annotations.length} boxes at confidence >= ` +
      `${threshold().toFixed(2)}` : "";
    fillTable();
  }

  function fillTable() {
    const body = $("list").tBodies[0];
    body.replaceChildren();
    kept().forEach((a, i) => {
      const tr = document.createElement("tr");
      const cells = [i + 1, a.category_name, a.score.toFixed(3), a.bbox.map((v) => v.toFixed(1)).join(", ")];
      for (const c of cells) {
        const td = document.createElement("td");
        td.textContent = String(c);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    });
  }

  function loadImage(blob) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      const url = URL.createObjectURL(blob);
      img.onload = () => { URL.revokeObjectURL(url); resolve(img); };
      img.onerror = () => { URL.revokeObjectURL(url); reject(new Error("the browser cannot show this image")); };
      img.src = url;
    });
  }

  async function runDetect(blob, name) {
    state.name = name || "image";
    setStatus(`detecting ${state.name} ...`, "loading");
    $("download").disabled = true;
    const query = new URLSearchParams({ conf: String(state.minConf), max_detections: "10000",
                                        model: modelSelect.value });
    try {
      const [response, image] = await Promise.all([
        fetch(`/v1/detect?${query}`, { method: "POST", body: blob,
          headers: headers({ "Content-Type": blob.type || "application/octet-stream" }) }),
        loadImage(blob).catch(() => null),
      ]);
      const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
      if (response.status === 401) $("key-box").hidden = false;
      if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
      if (!image) throw new Error("the browser cannot show this image");
      state.result = answer;
      state.image = image;
      $("hint").hidden = true;
      view.hidden = false;
      $("download").disabled = false;
      draw();
      const im = answer.images[0];
      setStatus(`${state.name}: ${im.width}x${im.height}, ${answer.model} (${answer.runtime}), ` +
                `${(answer.seconds * 1000).toFixed(0)} ms`, "done");
    } catch (err) {
      setStatus(`error: ${err.message}`, "error");
    }
  }

  async function loadModels() {
    try {
      const response = await fetch("/v1/models", { headers: headers() });
      if (response.status === 401) {
        $("key-box").hidden = false;
        setStatus("this service wants an API key", "error");
        return;
      }
      const info = await response.json();
      modelSelect.replaceChildren();
      for (const m of info.models) {
        const opt = document.createElement("option");
        opt.value = m.name;
        opt.textContent = `${m.name} (${m.classes.length === 1 ? m.classes[0] : m.classes.length + " classes"})`;
        modelSelect.appendChild(opt);
        state.minConf = m.min_conf;
      }
      modelSelect.value = info.default;
      slider.min = String(state.minConf);
      modelSelect.disabled = info.models.length < 2;
      setStatus("ready: choose, drop or paste an image", "idle");
    } catch (err) {
      setStatus(`error: ${err.message}`, "error");
    }
  }

  // every image goes through here: kept so that a change of model detects it again
  function detect(blob, name) {
    state.lastBlob = blob;
    return runDetect(blob, name);
  }

  function firstImage(items) {
    for (const f of items || []) if (f && f.type && f.type.startsWith("image/")) return f;
    return null;
  }

  $("file").addEventListener("change", (e) => {
    const f = e.target.files[0];
    if (f) detect(f, f.name);
    e.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const f = firstImage(e.dataTransfer.files);
    if (f) detect(f, f.name); else setStatus("error: that is not an image file", "error");
  });
  document.addEventListener("paste", (e) => {
    const items = Array.from(e.clipboardData ? e.clipboardData.items : []).map((i) => i.getAsFile());
    const f = firstImage(items);
    if (f) detect(f, f.name || "pasted image");
  });
  slider.addEventListener("input", draw);
  modelSelect.addEventListener("change", () => { if (state.lastBlob) runDetect(state.lastBlob, state.name); });
  $("api-key").addEventListener("change", loadModels);
  $("download").addEventListener("click", () => {
    if (!state.result) return;
    const doc = Object.assign({}, state.result, { conf: threshold(), annotations: kept() });
    const url = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 1)], { type: "application/json" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = `${state.name.replace(/\.[^.]*$/, "")}.detections.json`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  });


  // camera, where the browser allows it (a secure context: https or localhost)
  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    $("camera").hidden = false;
    $("camera").addEventListener("click", async () => {
      if (state.stream) {
        state.stream.getTracks().forEach((t) => t.stop());
        state.stream = null;
        video.hidden = true;
        $("snap").hidden = true;
        $("camera").textContent = "camera";
        return;
      }
      try {
        state.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
        video.srcObject = state.stream;
        await video.play();
        video.hidden = false;
        view.hidden = true;
        $("hint").hidden = true;
        $("snap").hidden = false;
        $("camera").textContent = "stop camera";
      } catch (err) {
        setStatus(`error: no camera (${err.message})`, "error");
      }
    });
    $("snap").addEventListener("click", () => {
      const c = document.createElement("canvas");
      c.width = video.videoWidth;
      c.height = video.videoHeight;
      c.getContext("2d").drawImage(video, 0, 0);
      video.hidden = true;
      c.toBlob((blob) => { if (blob) detect(blob, "camera frame"); }, "image/jpeg", 0.92);
    });
  }
  loadModels();
})();
