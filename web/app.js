// The page: load an in-graph explainer, pick an image, show the overlay, class and probability (onnxcam.js does the
// work). onnxruntime-web and its WebAssembly files are served from ./node_modules (no CDN).
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";

import { explain, explainerInfo, overlay, readMetadata, rgbOf } from "./onnxcam.js";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.logLevel = "error";
if (!self.crossOriginIsolated) ort.env.wasm.numThreads = 1; // threads need COOP/COEP headers

const RUNTIME = `onnxruntime-web ${ort.env.versions.web}, WebAssembly`;
const $ = (id) => document.getElementById(id);
const state = { session: null, info: null, image: null };

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function loadModel(bytes, name) {
  status(`loading ${name} …`);
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], logSeverityLevel: 3 });
  } catch (error) {
    throw new Error(`${name}: not an ONNX model onnxruntime-web can load (${String(error.message ?? error).split("\n")[0]})`);
  }
  state.info = explainerInfo(readMetadata(bytes), session.outputNames);
  state.session = session;
  $("method").replaceChildren(...state.info.methods.map((m) => new Option(m, m)));
  $("method").disabled = $("image").disabled = false;
  status(`${name}: in-graph ${state.info.methods.join(", ")}; pick an image`);
  if (state.image) await run();
}

async function loadImage(file) {
  // Pixels as stored: no colour-space conversion, no premultiplied alpha, EXIF orientation applied (as Python).
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const { width, height } = bitmap;
  state.image = { rgb: rgbOf(context.getImageData(0, 0, width, height)), width, height, name: file.name };
  await run();
}

async function run() {
  if (!state.session || !state.image) return;
  const { rgb, width, height, name } = state.image;
  const method = $("method").value;
  status(`explaining ${name} …`);
  const result = await explain(ort, state.session, state.info, rgb, width, height, method);
  const pixels = overlay(rgb, width, height, result.map, result.width, result.height);
  const view = $("view");
  [view.width, view.height] = [width, height];
  view.getContext("2d").putImageData(new ImageData(pixels, width, height), 0, 0);
  const label = result.label ?? `class ${result.classIndex}`;
  const p = result.probability;
  const how = p === null ? `score ${result.score.toPrecision(4)}` : `${(100 * p).toFixed(1)} %`;
  $("result").textContent = `${label} · ${how} · ${method}${result.warning ? ` — ${result.warning}` : ""}`;
  status(`${name}: ${width}×${height}, session run ${result.ms.toFixed(0)} ms (${RUNTIME})`);
  window.onnxcamResult = { ...result, method, overlay: pixels, imageWidth: width, imageHeight: height };
}

/** Median ms of `count` session runs on the last input (the benchmark of tests/test_web.py). */
window.onnxcamTime = async (count) => {
  const { input, width, height, method } = window.onnxcamResult;
  const feeds = {
    input: new ort.Tensor("float32", input, [1, 3, height, width]),
    target: new ort.Tensor("int64", BigInt64Array.of(-1n), [1]),
  };
  const times = [];
  for (let i = 0; i < count; i++) {
    const started = performance.now();
    await state.session.run(feeds, ["scores", "target_used", `cam:${method}`]);
    times.push(performance.now() - started);
  }
  const median = times.sort((a, b) => a - b)[Math.floor(count / 2)];
  status(`${state.image.name}: session run ${median.toFixed(0)} ms (median of ${count}; ${RUNTIME})`);
  return median;
};

const guard = (task) => (event) =>
  task(event).catch((error) => {
    status(error.message, true);
    window.onnxcamError = error.message;
  });

$("model").addEventListener(
  "change",
  guard(async (e) => loadModel(new Uint8Array(await e.target.files[0].arrayBuffer()), e.target.files[0].name)),
);
$("image").addEventListener("change", guard(async (e) => loadImage(e.target.files[0])));
$("method").addEventListener("change", guard(run));

const url = new URLSearchParams(location.search).get("model");
if (url) {
  guard(async () => {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    await loadModel(new Uint8Array(await response.arrayBuffer()), url.split("/").pop());
  })();
}
