// The in-browser bench: every verified artifact of the server's exports folder, run in this browser
// (ONNX with onnxruntime-web, .tflite with LiteRT.js; both WebAssembly with SIMD, multi-threaded when the
// page is cross-origin isolated), timed as mstl-bench times natively, and checked against the server's
// own answers on the run's held-out images: the page posts its answers to /device/results with the
// session the manifest gave this page load, and the server (which never sends its answers) compares.
//
// URL options: ?runs=50 (timed runs), ?warmup=5, ?threads=N, ?models=a.onnx,b.tflite, ?samples=K.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const RUNS = Math.max(1, parseInt(params.get("runs") || "50", 10));
const WARMUP = Math.max(0, parseInt(params.get("warmup") || "5", 10));
const ONLY = params.get("models") ? params.get("models").split(",") : null;
const MAX_SAMPLES = params.get("samples") ? parseInt(params.get("samples"), 10) : Infinity;
const ISOLATED = self.crossOriginIsolated === true;
const CORES = navigator.hardwareConcurrency || 1;
const THREADS = params.get("threads") ? Math.max(1, parseInt(params.get("threads"), 10))
  : (ISOLATED ? Math.min(CORES, 8) : 1);

// ---- preprocessing: the server's (Pillow's) pipeline, re-done in the browser ---------------------------
// Pillow resizes with a separable convolution whose kernel widens with the downscale factor (so a
// "bilinear" downscale is antialiased, unlike a canvas drawImage), in 8-bit fixed point with 22 fraction
// bits, the horizontal pass first. Done here the same way, so labels agree with the server's.

const FILTERS = {
  bilinear: { support: 1, f: (x) => { x = Math.abs(x); return x < 1 ? 1 - x : 0; } },
  bicubic: { support: 2, f: (x) => { const a = -0.5; x = Math.abs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a; return 0; } },
  area: { support: 0.5, f: (x) => (x > -0.5 && x <= 0.5 ? 1 : 0) },
  lanczos: { support: 3, f: (x) => { const s = (v) => { if (v === 0) return 1; v *= Math.PI; return Math.sin(v) / v; };
    return x > -3 && x < 3 ? s(x) * s(x / 3) : 0; } },
};
const PRECISION = 22;

function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const fscale = Math.max(scale, 1);
  const support = filter.support * fscale;
  const out = [];
  for (let i = 0; i < outSize; i++) {
    const center = (i + 0.5) * scale;
    const ss = 1 / fscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize);
    const w = [];
    let sum = 0;
    for (let x = xmin; x < xmax; x++) { const v = filter.f((x - center + 0.5) * ss); w.push(v); sum += v; }
    const k = w.map((v) => { const n = sum ? v / sum : 0; return n < 0 ? Math.trunc(-0.5 + n * (1 << PRECISION)) : Math.trunc(0.5 + n * (1 << PRECISION)); });
    out.push({ xmin, k });
  }
  return out;
}

const clip8 = (v) => { const r = Math.floor((v + (1 << (PRECISION - 1))) / (1 << PRECISION)); return r < 0 ? 0 : r > 255 ? 255 : r; };

function resizeRGB(src, w, h, size, method) {
  // src: Uint8Array RGB (w*h*3). Returns Uint8Array RGB (size*size*3).
  if (method === "nearest") {
    const out = new Uint8Array(size * size * 3);
    for (let y = 0; y < size; y++) {
      const sy = Math.min(h - 1, Math.floor((y + 0.5) * h / size));
      for (let x = 0; x < size; x++) {
        const sx = Math.min(w - 1, Math.floor((x + 0.5) * w / size));
        for (let c = 0; c < 3; c++) out[(y * size + x) * 3 + c] = src[(sy * w + sx) * 3 + c];
      }
    }
    return out;
  }
  const filter = FILTERS[method] || FILTERS.bilinear;
  let cur = src, cw = w;
  if (w !== size) {
    const cs = coefficients(w, size, filter);
    const tmp = new Uint8Array(size * h * 3);
    for (let y = 0; y < h; y++) for (let x = 0; x < size; x++) {
      const { xmin, k } = cs[x];
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let j = 0; j < k.length; j++) s += cur[(y * cw + xmin + j) * 3 + c] * k[j];
        tmp[(y * size + x) * 3 + c] = clip8(s);
      }
    }
    cur = tmp; cw = size;
  }
  if (h !== size) {
    const cs = coefficients(h, size, filter);
    const tmp = new Uint8Array(size * size * 3);
    for (let y = 0; y < size; y++) {
      const { xmin, k } = cs[y];
      for (let x = 0; x < cw; x++) for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let j = 0; j < k.length; j++) s += cur[((xmin + j) * cw + x) * 3 + c] * k[j];
        tmp[(y * cw + x) * 3 + c] = clip8(s);
      }
    }
    cur = tmp;
  }
  return cur;
}

const BIG_PICTURE = 4000000; // pixels: edge/core/images.py's BIG_PICTURE

function reduceMultiplier(n) {
  // Pillow divides a block's sum by n in 8.24 fixed point, its multiplier computed in float32
  // (Reduce.c, division_UINT32): for n that is not a power of two it can round one lower than exact.
  return Math.floor(Math.fround(4294967296 / Math.fround(256 * n)));
}

function reduceRGB(src, w, h, fx, fy) {
  // Pillow's Image.reduce((fx, fy)): the mean of each fx x fy block (edge blocks: of what is there).
  const ow = Math.ceil(w / fx), oh = Math.ceil(h / fy);
  const out = new Uint8Array(ow * oh * 3);
  for (let y = 0; y < oh; y++) for (let x = 0; x < ow; x++) {
    const y1 = Math.min(h, (y + 1) * fy), x1 = Math.min(w, (x + 1) * fx);
    const n = (y1 - y * fy) * (x1 - x * fx), mult = reduceMultiplier(n), amend = Math.floor(n / 2);
    for (let c = 0; c < 3; c++) {
      let s = 0;
      for (let yy = y * fy; yy < y1; yy++) for (let xx = x * fx; xx < x1; xx++) s += src[(yy * w + xx) * 3 + c];
      out[(y * ow + x) * 3 + c] = Math.floor(((s + amend) * mult) / 16777216);
    }
  }
  return { rgb: out, w: ow, h: oh };
}

async function decode(blob) {
  // EXIF orientation applied, no colour management; transparent pixels composited on black (the server's rule).
  const bmp = await createImageBitmap(blob, { imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(bmp.width, bmp.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, bmp.width, bmp.height);
  ctx.drawImage(bmp, 0, 0);
  const { data } = ctx.getImageData(0, 0, bmp.width, bmp.height);
  const rgb = new Uint8Array(bmp.width * bmp.height * 3);
  for (let i = 0, j = 0; i < data.length; i += 4, j += 3) { rgb[j] = data[i]; rgb[j + 1] = data[i + 1]; rgb[j + 2] = data[i + 2]; }
  const out = { rgb, w: bmp.width, h: bmp.height };
  bmp.close();
  return out;
}

async function pixels(blob, size, method) {
  let img = await decode(blob);
  // The server's _shrink (edge/core/images.py): the short side's factor, or a large sliver's long side.
  let fx = Math.floor(img.w / (2 * size)), fy = Math.floor(img.h / (2 * size));
  if (Math.min(fx, fy) >= 2) fx = fy = Math.min(fx, fy);
  else if (Math.max(fx, fy) >= 2 && img.w * img.h >= BIG_PICTURE) { if (fx >= 2) fy = 1; else fx = 1; }
  else fx = fy = 1;
  if (fx > 1 || fy > 1) img = reduceRGB(img.rgb, img.w, img.h, fx, fy);
  return resizeRGB(img.rgb, img.w, img.h, size, method);
}

function toInput(rgb, input) {
  // The model's input from raw pixels: float32 [0, 255], or an integer type through its quantization.
  const dtype = input.dtype || "float32";
  if (dtype === "float32") return Float32Array.from(rgb);
  const q = input.quantization || { scale: 1, zero_point: 0 };
  const Arr = dtype === "int8" ? Int8Array : Uint8Array;
  const [lo, hi] = dtype === "int8" ? [-128, 127] : [0, 255];
  if (q.scale === 1 && q.zero_point === 0 && dtype === "uint8") return Uint8Array.from(rgb);
  const out = new Arr(rgb.length);
  for (let i = 0; i < rgb.length; i++) out[i] = Math.max(lo, Math.min(hi, Math.round(rgb[i] / q.scale + q.zero_point)));
  return out;
}

function toProbs(raw, output) {
  const q = output && output.quantization;
  return Array.from(raw, (v) => (q && output.dtype !== "float32" ? (v - q.zero_point) * q.scale : v));
}

// ---- runtimes -----------------------------------------------------------------------------------------

let ort = null, litert = null;

async function ortRunner(bytes, model) {
  if (!ort) {
    ort = await import("/static/vendor/ort/ort.wasm.min.mjs");
    ort.env.wasm.wasmPaths = "/static/vendor/ort/";
    ort.env.wasm.numThreads = THREADS;
    ort.env.wasm.simd = true;
  }
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  const name = session.inputNames[0], outName = session.outputNames[0];
  const shape = model.input.shape;
  const type = (model.input.dtype || "float32") === "float32" ? "float32" : model.input.dtype;
  return {
    runtime: `onnxruntime-web ${ort.env.versions ? ort.env.versions.web || "" : ""}`.trim(),
    backend: `wasm-simd${THREADS > 1 ? "-threaded" : ""}`,
    run: async (x) => {
      const out = await session.run({ [name]: new ort.Tensor(type, x, shape) });
      return out[outName].data;
    },
  };
}

async function litertRunner(bytes, model) {
  if (!litert) {
    litert = await import("/static/vendor/litert/index.js");
    await litert.loadLiteRt("/static/vendor/litert/wasm/", { threads: ISOLATED && THREADS > 1 });
  }
  const compiled = await litert.loadAndCompile(new Uint8Array(bytes), { accelerator: "wasm", cpuOptions: { numThreads: THREADS } });
  const shape = model.input.shape;
  return {
    runtime: "LiteRT.js 2.5.3",
    backend: `wasm-xnnpack${ISOLATED && THREADS > 1 ? "-threaded" : ""}`,
    run: async (x) => {
      const t = new litert.Tensor(x, shape);
      const outs = await compiled.run(t);
      t.delete();
      const first = outs[0];
      const data = first.toTypedArray().slice();
      for (const o of outs) o.delete();
      return data;
    },
  };
}

// ---- the bench ----------------------------------------------------------------------------------------

function stats(ms) {
  const s = [...ms].sort((a, b) => a - b);
  const at = (p) => { const i = (s.length - 1) * p, lo = Math.floor(i), hi = Math.ceil(i); return s[lo] + (s[hi] - s[lo]) * (i - lo); };
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), mean: s.reduce((a, b) => a + b, 0) / s.length };
}

const fmt = (v, d = 2) => (v == null ? "-" : v.toFixed(d));

function addRow(cells, cls) {
  const tr = document.createElement("tr");
  if (cls) tr.className = cls;
  for (const [text, kind] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    if (kind) td.className = kind;
    tr.appendChild(td);
  }
  $("rows").appendChild(tr);
  return tr;
}

async function benchOne(model, samples) {
  const t0 = performance.now();
  const bytes = await (await fetch(model.url)).arrayBuffer();
  const downloadMs = performance.now() - t0;
  const t1 = performance.now();
  const runner = model.format === "onnx" ? await ortRunner(bytes, model) : await litertRunner(bytes, model);
  const loadMs = performance.now() - t1;
  const size = model.input.shape[1], method = (model.input.resize || {}).method || "bilinear";
  const x = toInput(samples.length ? await pixels(samples[0].blob, size, method) : new Uint8Array(size * size * 3).fill(127), model.input);
  let t = performance.now();
  await runner.run(x);
  const firstMs = performance.now() - t;
  for (let i = 0; i < WARMUP; i++) await runner.run(x);
  const times = [];
  for (let i = 0; i < RUNS; i++) { t = performance.now(); await runner.run(x); times.push(performance.now() - t); }
  const probs = [], e2e = [];
  for (const s of samples) {  // file bytes in memory -> decode -> resize -> infer: what an app pays per picture
    t = performance.now();
    const raw = await runner.run(toInput(await pixels(s.blob, size, method), model.input));
    e2e.push(performance.now() - t);
    probs.push(toProbs(raw, model.output || {}));
  }
  return { runner, loadMs, downloadMs, firstMs, lat: stats(times), e2e: e2e.length ? stats(e2e) : null, probs };
}

// The card's operating point, when it has one: how often this browser decides as the server does there.
function opText(row) {
  const at = row && row.agreement && row.agreement.at_operating_point;
  return at ? `; at the operating point (${at.threshold.toFixed(3)}) ${(100 * at.decision_agreement).toFixed(1)}%` : "";
}

// The app's decision (src/mstl/edge/core/decision.py decide), redone here on this device's probabilities: the
// card's temperature, softmax(log p / T), then its threshold on the positive class; "uncertain - refer"
// within the app's band. A card without an operating point decides by the most probable class.
function decideHere(p, model, band) {
  const d = model.decision, labels = model.labels || p.map((_, i) => String(i));
  if (!d || !d.chosen_on || p.length !== 2) {
    const k = p.indexOf(Math.max(...p));
    return { label: labels[k], probability: p[k], text: "no operating point in the model card: the most probable class (0.5)" };
  }
  const T = d.temperature || 1, pos = d.positive_index ?? 1, t = d.threshold;
  const logp = p.map((v) => Math.log(Math.min(Math.max(v, 1e-12), 1)) / T), top = Math.max(...logp);
  const e = logp.map((v) => Math.exp(v - top)), s = e[pos] / (e[0] + e[1]);
  const side = s >= t ? "above" : "below", sens = d.validation_sensitivity;
  const what = `${d.target}` + (sens != null ? `, sensitivity ${Math.round(100 * sens)}% on validation` : "");
  const uncertain = band > 0 && Math.abs(s - t) < band;
  return { label: uncertain ? "uncertain - refer" : labels[s >= t ? pos : 1 - pos], probability: s,
           text: `${side} the operating point (${what})` + (uncertain ? `; within ${band} of the threshold` : "") };
}

// This device's own answers, per sample, as a clinician-facing prototype would show them.
function showAnswers(model, probs, band) {
  const body = $("answers");
  body.replaceChildren();
  $("answers-of").textContent = model.name;
  probs.forEach((p, i) => {
    const a = decideHere(p, model, band);
    const tr = document.createElement("tr");
    tr.dataset.label = a.label;
    for (const [text, kind] of [[`#${i}`], [a.probability.toFixed(3), "num"], [a.label], [a.text, "muted"]]) {
      const td = document.createElement("td");
      td.textContent = text;
      if (kind) td.className = kind;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  });
  $("answers-card").hidden = !probs.length;
}

async function main() {
  $("run").disabled = true;
  $("env").textContent = `${CORES} logical core(s); cross-origin isolated: ${ISOLATED ? "yes" : "no (single-threaded WebAssembly)"}; `
    + `threads: ${THREADS}; ${RUNS} timed runs after ${WARMUP} warm-up, batch 1`;
  $("status").textContent = "Fetching the model list and the server's answers...";
  const manifest = await (await fetch("/device/manifest")).json();
  if (manifest.stale) $("env").textContent += `; ${manifest.stale}`;
  if (!manifest.runtimes) {
    throw new Error("this installation has no in-browser runtimes: it was built without npm "
      + "(run `make web`, or scripts/fetch_web_assets.py, where the package is built)");
  }
  const sampleList = manifest.samples.slice(0, MAX_SAMPLES);
  const samples = [];
  for (const s of sampleList) samples.push({ ...s, blob: await (await fetch(s.url)).blob() });
  const models = manifest.models.filter((m) => !ONLY || ONLY.includes(m.name));
  const posted = [], answers = {};
  for (const [i, model] of models.entries()) {
    $("status").textContent = `Running ${model.name} (${i + 1} of ${models.length})...`;
    try {
      const r = await benchOne(model, samples);
      answers[model.name] = { model, probs: r.probs };
      // The server keeps its own answers: agreement is what it computes from this page's (a subset
      // of the samples, ?samples=K, is not posted and so not checked).
      const body = {
        artifact: model.name, runtime: r.runner.runtime, backend: r.runner.backend, threads: THREADS, runs: RUNS,
        load_ms: r.loadMs, download_ms: r.downloadMs, first_ms: r.firstMs, latency_ms: r.lat, e2e_ms: r.e2e,
        probs: r.probs, n_samples: samples.length, session: manifest.session.id,
        device: { user_agent: navigator.userAgent, hardware_concurrency: CORES, platform: navigator.platform || "",
                  device_memory_gb: navigator.deviceMemory || 0, cross_origin_isolated: ISOLATED,
                  viewport: `${innerWidth}x${innerHeight}`, webgpu: !!navigator.gpu },
      };
      let row = null;
      if (samples.length === manifest.samples.length) {
        const res = await fetch("/device/results", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
        row = await res.json();
        if (!res.ok) throw new Error(`the server refused the result: ${row.error}`);
        posted.push(row);
      }
      const a = row && row.agreement ? row.agreement.rate : null;
      const low = a != null && a < manifest.low_agreement;
      const tr = addRow([[model.name], [`${r.runner.runtime} ${r.runner.backend}`], [fmt(r.loadMs, 0), "num"],
        [`${fmt(r.lat.p50)} / ${fmt(r.lat.p90)} / ${fmt(r.lat.p99)}`, "num"], [fmt(r.e2e && r.e2e.p50), "num"],
        [a == null ? (row ? "n/a" : "not checked (a subset of the samples)")
          : `${(100 * a).toFixed(1)}%${low ? " LOW" : ""}` + opText(row), low ? "low" : "num"]]);
      tr.dataset.artifact = model.name;
      tr.dataset.p50 = r.lat.p50;
      tr.dataset.agrees = String(a != null && !low);
    } catch (e) {
      addRow([[model.name], [String(e && e.message ? e.message : e), "error"], [""], [""], [""], [""]]);
    }
  }
  const ok = [...$("rows").children].filter((tr) => tr.dataset.agrees === "true");
  if (ok.length) {
    const best = ok.reduce((a, b) => (+a.dataset.p50 <= +b.dataset.p50 ? a : b));
    best.classList.add("best");
    $("best").textContent = `Fastest that agrees with the server: ${best.dataset.artifact} `
      + `(${(+best.dataset.p50).toFixed(2)} ms p50, ${best.children[1].textContent}).`;
    $("best").dataset.artifact = best.dataset.artifact;
    showAnswers(answers[best.dataset.artifact].model, answers[best.dataset.artifact].probs, manifest.uncertain_band || 0);
  } else {
    $("best").textContent = "No model both ran here and agreed with the server.";
  }
  $("status").textContent = `Done: ${posted.length} result(s) posted to the server's bench table.`;
  $("done").textContent = JSON.stringify(posted.map((r) => r.saved_as));
  $("done").hidden = false;
  $("run").disabled = false;
}

$("run").addEventListener("click", () => main().catch((e) => {
  $("status").textContent = `Failed: ${e && e.message ? e.message : e}`;
  $("status").className = "error";
  $("done").textContent = "[]";
  $("done").hidden = false;
  $("run").disabled = false;
}));

// The page's preprocessing, callable from the console (and the tests) to compare with the server's:
// await mstlPixels(blob, 150, "bilinear") -> Uint8Array of size*size*3 RGB.
self.mstlPixels = pixels;
