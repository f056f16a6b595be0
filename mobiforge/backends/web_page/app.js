// The mobiforge web page: classifies a photo or a camera frame with the model in this folder, in this browser.
// page.json says how the model was trained to see an image (one source: the model's own preprocessing, written by
// mobiforge) and labels.txt names its outputs. window.mobiforge is what mobiforge's own gate drives in Chromium.

const MAX_PIXELS = 100e6; // larger images get a message instead of a decode that could take the tab's memory
const MAX_BYTES = 64 * 2 ** 20;
const TOP = 5;
const $ = (id) => document.getElementById(id);

function say(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function fetchText(name) {
  const response = await fetch(name);
  if (!response.ok) throw new Error(`${name} is missing from this folder (HTTP ${response.status})`);
  return response.text();
}

async function loadModel() {
  if (typeof WebAssembly !== "object") throw new Error("this browser has no WebAssembly: it cannot run the model");
  const [config, labels] = await Promise.all([fetchText("page.json").then(JSON.parse), fetchText("labels.txt")]);
  const classes = labels.split("\n").filter((line) => line.length > 0);
  const litert = await import("./litert/core.js");
  // LiteRT's native INFO and WARNING lines (its NPU and WebGPU probes) are not the user's; errors still show.
  // Emscripten reads its settings from self.Module, which LiteRT.js's loader takes when one is set.
  self.Module = { print: () => {}, printErr: (text) => /^(INFO|WARNING): /.test(text) || console.error(text) };
  // LiteRT.js picks its build by the same probe: with relaxed SIMD, or the slower one without for a browser that
  // lacks it
  const simd = await litert.supportsFeature("relaxedSimd");
  await litert.loadLiteRt(new URL("./litert/wasm/", import.meta.url).href);
  const compiled = await litert.loadAndCompile(config.model, { accelerator: "wasm" });
  return { litert, compiled, config, classes, simd };
}

// The part of a width x height image the model sees (left, top, width, height in pixels): the center square of
// img_size / resize_size of the short side, or all of it when crop_pct is 1, as Preprocess.region_seen says.
function regionSeen(pre, width, height) {
  if (pre.crop_pct >= 1) return [0, 0, width, height];
  const side = Math.min(width, height) * pre.img_size / pre.resize_size;
  return [(width - side) / 2, (height - side) / 2, side, side];
}

function toInput(model, source, region) {
  const size = model.config.preprocess.img_size;
  const canvas = $("preview");
  canvas.width = size;
  canvas.height = size;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  const [left, top, width, height] = region;
  context.drawImage(source, left, top, width, height, 0, 0, size, size);
  const rgba = context.getImageData(0, 0, size, size).data;
  const pixels = new Uint8Array(size * size * 3); // RGB, row by row: the NHWC uint8 input the file takes
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    pixels[j] = rgba[i];
    pixels[j + 1] = rgba[i + 1];
    pixels[j + 2] = rgba[i + 2];
  }
  return new model.litert.Tensor(pixels, [1, size, size, 3]);
}

function softmax(logits) {
  const top = Math.max(...logits);
  const exps = Array.from(logits, (value) => Math.exp(value - top));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((value) => value / sum);
}

async function run(model, input) {
  try {
    const started = performance.now();
    const outputs = await model.compiled.run(input);
    const ms = performance.now() - started;
    const values = Array.from(outputs[0].toTypedArray());
    for (const output of outputs) output.delete(); // LiteRT.js tensors live in the WebAssembly heap
    const probabilities = model.config.output === "probabilities" ? values : softmax(values);
    return { probabilities, ms };
  } finally {
    input.delete();
  }
}

// Top-5 of a decoded image or video frame; region: [left, top, right, bottom] fractions, or the region the model saw
async function classifySource(model, source, width, height, region) {
  const box = region ? [region[0] * width, region[1] * height, (region[2] - region[0]) * width,
    (region[3] - region[1]) * height] : regionSeen(model.config.preprocess, width, height);
  const started = performance.now();
  const { probabilities, ms } = await run(model, toInput(model, source, box));
  const order = probabilities.map((p, i) => i).sort((a, b) => probabilities[b] - probabilities[a]);
  const top = order.slice(0, TOP).map((i) => ({ index: i, label: model.classes[i] ?? `class ${i}`,
    probability: probabilities[i] }));
  return { top, runtime_ms: ms, total_ms: performance.now() - started };
}

function decodeImage(blob) {
  return new Promise((resolve, reject) => {
    if (blob.size > MAX_BYTES) {
      reject(new Error(`this file is ${(blob.size / 2 ** 20).toFixed(0)} MB; the page takes photos up to ` +
        `${MAX_BYTES / 2 ** 20} MB`));
      return;
    }
    const url = URL.createObjectURL(blob);
    const image = new Image();
    image.onload = () => {
      URL.revokeObjectURL(url);
      if (image.naturalWidth * image.naturalHeight > MAX_PIXELS) {
        reject(new Error(`this image is ${image.naturalWidth}x${image.naturalHeight} pixels; the page takes up ` +
          `to ${MAX_PIXELS / 1e6} megapixels`));
      } else resolve(image);
    };
    image.onerror = () => {
      URL.revokeObjectURL(url);
      reject(new Error("this file is not an image the browser can read (JPEG, PNG, WebP, GIF...)"));
    };
    image.src = url;
  });
}

async function classifyBlob(model, blob, region) {
  const image = await decodeImage(blob);
  return classifySource(model, image, image.naturalWidth, image.naturalHeight, region);
}

function show(result) {
  const list = $("top");
  list.replaceChildren(...result.top.map(({ label, probability }) => {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = label; // text, never markup: a class name is the user's data
    const share = document.createElement("span");
    share.textContent = `${(100 * probability).toFixed(1)}%`;
    item.append(name, share);
    return item;
  }));
  $("latency").textContent = `${result.runtime_ms.toFixed(1)} ms in the runtime ` +
    `(${result.total_ms.toFixed(1)} ms with the resize)`;
}

async function onFile(model, file) {
  if (!file) return;
  try {
    show(await classifyBlob(model, file));
    say(`${file.name}: classified`);
  } catch (error) {
    say(`${file.name}: ${error.message}`, true);
  }
}

function cameraRefusal() {
  if (!window.isSecureContext) {
    return `The browser gives the camera only to https pages and localhost; this page is plain http at ` +
      `${location.host}. Choose a photo instead, or open the page over https (see mobiforge's docs/web.md).`;
  }
  if (!navigator.mediaDevices?.getUserMedia) return "This browser offers no camera to pages. Choose a photo instead.";
  return null;
}

async function startCamera(model) {
  const refusal = cameraRefusal();
  const note = $("camera-note");
  if (refusal) {
    note.textContent = refusal;
    note.hidden = false;
    return;
  }
  const video = $("video");
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { facingMode: { ideal: "environment" } },
      audio: false });
  } catch (error) {
    note.textContent = `The camera did not start (${error.name}). Choose a photo instead.`;
    note.hidden = false;
    return;
  }
  await video.play();
  $("live").hidden = false;
  const snap = async () => {
    if (!video.videoWidth) return;
    show(await classifySource(model, video, video.videoWidth, video.videoHeight));
  };
  let looping = false;
  const loop = async () => {
    if (!$("continuous").checked) {
      looping = false;
      return;
    }
    await snap();
    requestAnimationFrame(loop);
  };
  $("snap").onclick = snap;
  video.onclick = snap; // a tap on the picture classifies it
  $("continuous").onchange = () => {
    if ($("continuous").checked && !looping) {
      looping = true;
      loop();
    }
  };
}

function showQr(source) {
  const image = $("qr");
  image.onload = () => { $("qr-figure").hidden = false; };
  image.src = source;
}

async function main() {
  let model;
  try {
    model = await loadModel();
  } catch (error) {
    say(`The model did not load: ${error.message}`, true);
    throw error;
  }
  const name = model.config.name || "mobiforge model";
  document.title = name;
  $("title").textContent = name;
  $("runtime").textContent = `${model.config.runtime}, WebAssembly ${model.simd ? "with relaxed SIMD" : "without relaxed SIMD (slower)"}.`;
  say(`Ready: ${model.classes.length} classes. Choose a photo or use the camera.`);
  $("file").onchange = (event) => onFile(model, event.target.files[0]);
  $("camera").onclick = () => startCamera(model);
  if (model.config.qr) showQr(model.config.qr); // mobiforge serve --lan adds the code of the page's address
  return model;
}

const ready = main();
ready.catch(() => {}); // the status line already says why
// What mobiforge's gate and tests drive (page.evaluate): the page's own preprocessing and runtime
window.mobiforge = {
  ready: ready.then(() => true),
  classifyBytes: async (base64, region) => {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return classifyBlob(await ready, new Blob([bytes]), region);
  },
  info: async () => {
    const model = await ready;
    return { runtime: model.config.runtime, simd: model.simd, classes: model.classes };
  },
};
