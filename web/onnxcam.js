// onnxcam in JavaScript: read an explainer graph's metadata, build its `input` tensor from RGB pixels exactly as the
// Python runtime does (onnxcam/preprocess.py), run the graph and turn its in-graph map `cam:<method>` into an overlay
// (onnxcam/visual.py). Pure functions over typed arrays: the same module serves the browser (onnxruntime-web) and
// Node.js (onnxruntime-node); the caller passes its `ort`.

const META = "onnxcam.";

/** The ONNX file's `metadata_props` (ModelProto field 14: key 1, value 2) as an object; a minimal protobuf walk. */
export function readMetadata(bytes) {
  const decoder = new TextDecoder();
  const props = {};
  const varint = (pos) => {
    let value = 0;
    let scale = 1;
    for (;;) {
      const byte = bytes[pos.at++];
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
      scale *= 128;
    }
  };
  const fields = (start, end, visit) => {
    const pos = { at: start };
    while (pos.at < end) {
      const tag = varint(pos);
      const [field, wire] = [Math.floor(tag / 8), tag & 7];
      if (wire === 0) varint(pos);
      else if (wire === 1) pos.at += 8;
      else if (wire === 5) pos.at += 4;
      else if (wire === 2) {
        const length = varint(pos);
        visit(field, pos.at, pos.at + length);
        pos.at += length;
      } else throw new Error(`not an ONNX file (protobuf wire type ${wire})`);
    }
  };
  fields(0, bytes.length, (field, start, end) => {
    if (field !== 14) return;
    const entry = {};
    fields(start, end, (f, s, e) => {
      entry[f] = decoder.decode(bytes.subarray(s, e));
    });
    props[entry[1] ?? ""] = entry[2] ?? "";
  });
  return props;
}

/** What the page and the example need from the metadata; throws a one-line error for files they cannot explain. */
export function explainerInfo(props, outputNames) {
  if (!(`${META}contract_version` in props)) {
    throw new Error("not an onnxcam explainer graph (no onnxcam metadata): export it with `onnxcam export`");
  }
  const methods = outputNames.filter((n) => n.startsWith("cam:")).map((n) => n.slice(4));
  if (methods.length === 0) {
    const how = "export it with `onnxcam export … --in-graph gradcam`";
    throw new Error(`this explainer graph has no in-graph maps: ${how}`);
  }
  if (props[`${META}detection`]) throw new Error("detectors are not supported here: use the Python runtime");
  const batch = Number(props[`${META}fixed_batch`] ?? 1);
  if (batch !== 1) throw new Error(`this graph runs ${batch} images at a time (fixed batch): use the Python runtime`);
  const spec = { input_size: [224, 224], mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
  Object.assign(spec, { channel_order: "RGB", value_scale: 1 / 255, resize: "bilinear", channels: 3 });
  Object.assign(spec, JSON.parse(props[`${META}preprocess`] ?? "{}"));
  if (spec.channels !== 3) throw new Error(`the input has ${spec.channels} channel(s); this code takes RGB models`);
  if (spec.resize !== "bilinear") throw new Error(`resize '${spec.resize}' is not implemented here (bilinear is)`);
  const labels = props[`${META}labels`] ? JSON.parse(props[`${META}labels`]) : null;
  const scoreLimits = props[`${META}score_limits`] ? JSON.parse(props[`${META}score_limits`]) : null;
  const gradients = outputNames.filter((n) => n.startsWith("gradient:"));
  const scoresKind = props[`${META}scores_kind`] || "logits";
  return { preprocess: spec, labels, scoresKind, methods, scoreLimits, gradients };
}

const COEF_BITS = 11; // OpenCV's INTER_RESIZE_COEF_BITS

function roundHalfEven(x) {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Source index pairs and weights of OpenCV's bilinear resize along one axis (half-pixel centres, edges clamped). */
function linearTaps(dst, src, fixed) {
  const scale = 1 / (dst / src);
  const i0 = new Int32Array(dst);
  const i1 = new Int32Array(dst);
  const w0 = new Float64Array(dst);
  const w1 = new Float64Array(dst);
  for (let d = 0; d < dst; d++) {
    let f = Math.fround((d + 0.5) * scale - 0.5);
    let s = Math.floor(f);
    f = Math.fround(f - s);
    if (s < 0) [f, s] = [0, 0];
    if (s >= src - 1) [f, s] = [0, src - 1];
    i0[d] = s;
    i1[d] = Math.min(s + 1, src - 1);
    const a = Math.fround(1 - f);
    w0[d] = fixed ? roundHalfEven(a * (1 << COEF_BITS)) : a;
    w1[d] = fixed ? roundHalfEven(f * (1 << COEF_BITS)) : f;
  }
  return { i0, i1, w0, w1 };
}

/**
 * `cv2.resize(pixels, (w, h), interpolation=cv2.INTER_LINEAR)` of uint8 pixels `[H, W, C]`: 11-bit fixed-point
 * weights, exact horizontal sums, OpenCV's vectorised vertical rounding
 * `((S0 >> 4)·β0 >> 16) + ((S1 >> 4)·β1 >> 16) + 2 >> 2`. Bit for bit equal to OpenCV when shrinking
 * (tests/test_web.py); when enlarging, the first and last rows may differ by 1.
 */
export function resizeLinearU8(pixels, width, height, channels, w, h) {
  const x = linearTaps(w, width, true);
  const y = linearTaps(h, height, true);
  const rows = new Int32Array(height * w * channels);
  for (let r = 0; r < height; r++) {
    for (let d = 0; d < w; d++) {
      const p0 = (r * width + x.i0[d]) * channels;
      const p1 = (r * width + x.i1[d]) * channels;
      for (let c = 0; c < channels; c++) {
        rows[(r * w + d) * channels + c] = pixels[p0 + c] * x.w0[d] + pixels[p1 + c] * x.w1[d];
      }
    }
  }
  const out = new Uint8Array(h * w * channels);
  const line = w * channels;
  for (let d = 0; d < h; d++) {
    const [s0, s1, b0, b1] = [y.i0[d] * line, y.i1[d] * line, y.w0[d], y.w1[d]];
    for (let k = 0; k < line; k++) {
      const v = (((rows[s0 + k] >> 4) * b0) >> 16) + (((rows[s1 + k] >> 4) * b1) >> 16);
      out[d * line + k] = Math.min(255, Math.max(0, (v + 2) >> 2));
    }
  }
  return out;
}

/** `cv2.resize(map, (w, h), interpolation=cv2.INTER_LINEAR)` of a float32 map `[H, W]` (float weights). */
export function resizeLinearF32(map, width, height, w, h) {
  if (width === w && height === h) return map;
  const x = linearTaps(w, width, false);
  const y = linearTaps(h, height, false);
  const f = Math.fround;
  const out = new Float32Array(h * w);
  for (let d = 0; d < h; d++) {
    const [r0, r1, b0, b1] = [y.i0[d] * width, y.i1[d] * width, y.w0[d], y.w1[d]];
    for (let k = 0; k < w; k++) {
      const top = f(f(map[r0 + x.i0[k]] * x.w0[k]) + f(map[r0 + x.i1[k]] * x.w1[k]));
      const bottom = f(f(map[r1 + x.i0[k]] * x.w0[k]) + f(map[r1 + x.i1[k]] * x.w1[k]));
      out[d * w + k] = f(f(top * b0) + f(bottom * b1));
    }
  }
  return out;
}

/** RGBA pixels `{data, width, height}` (a canvas's ImageData) → RGB uint8 `[H, W, 3]` (alpha dropped, as Python). */
export function rgbOf(image) {
  const { data, width, height } = image;
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    rgb[i] = data[j];
    rgb[i + 1] = data[j + 1];
    rgb[i + 2] = data[j + 2];
  }
  return rgb;
}

/**
 * RGB uint8 `[H, W, 3]` → the graph's `input` float32 `[1, 3, h, w]`:
 * `(resize(pixels)·value_scale − mean) / std` in the metadata's channel order, each step rounded to float32 as numpy
 * does (onnxcam/preprocess.py).
 */
export function toInput(rgb, width, height, spec) {
  const [h, w] = spec.input_size;
  const resized = resizeLinearU8(rgb, width, height, 3, w, h);
  const f = Math.fround;
  const perChannel = (v) => (v.length === 1 ? [v[0], v[0], v[0]] : v).map(f);
  const [mean, std, scale] = [perChannel(spec.mean), perChannel(spec.std), f(spec.value_scale)];
  const order = spec.channel_order === "BGR" ? [2, 1, 0] : [0, 1, 2];
  const x = new Float32Array(3 * h * w);
  for (let c = 0; c < 3; c++) {
    const src = order[c];
    for (let i = 0; i < h * w; i++) x[c * h * w + i] = f(f(f(resized[i * 3 + src] * scale) - mean[c]) / std[c]);
  }
  return x;
}

/** One image's scores `[K, …]` → per class `[K]`: a dense output averaged over its positions (as Python). */
export function perClass(scores, dims) {
  const classes = dims[1];
  const positions = scores.length / classes;
  const out = new Float64Array(classes);
  for (let k = 0; k < classes; k++) {
    for (let i = 0; i < positions; i++) out[k] += scores[k * positions + i];
    out[k] /= positions;
  }
  return out;
}

/** Per-class probabilities as the scores kind defines them (onnxcam/scores.py); `raw` scores have none (null). */
export function probabilities(scores, kind) {
  if (kind === "raw") return null;
  if (kind === "probabilities") return Float64Array.from(scores);
  if (kind === "sigmoid") return Float64Array.from(scores, (z) => 1 / (1 + Math.exp(-z)));
  const top = Math.max(...scores);
  const e = Float64Array.from(scores, (z) => Math.exp(z - top));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/** `x` as Python's `f"{x:.6g}"` writes it (fixed notation for the magnitudes scores have). */
function sixDigits(x) {
  return String(Number(x.toPrecision(6)));
}

/**
 * The line of onnxcam/score_clip.py for a map left blank by an int8 score clipped at its quantization range
 * (metadata `score_limits` `[lo, hi]`): the explained class's scores `classScores` at either limit, every gradient
 * output exactly 0 (the straight-through estimator's 0 beyond the range) and the map 0 everywhere; else null.
 */
export function clipWarning(limits, classScores, gradients, map, method) {
  if (!limits || gradients.length === 0) return null;
  if (gradients.some((g) => g.some((v) => v !== 0)) || map.some((v) => v !== 0)) return null;
  const [lo, hi] = limits;
  const slack = 1e-6 * Math.max(Math.abs(lo), Math.abs(hi));
  const [value, end] = classScores.some((z) => z >= hi - slack)
    ? [hi, "top"]
    : classScores.some((z) => z <= lo + slack)
      ? [lo, "bottom"]
      : [null, null];
  if (end === null) return null;
  const range = `[${sixDigits(lo)}, ${sixDigits(hi)}]`;
  return (
    `the explained score (${sixDigits(value)}) is clipped at the ${end} of the int8 scores' quantization range ` +
    `${range}: its gradient is 0 and small changes of the image leave it there, so these maps are blank: ` +
    `${method}; calibrate the int8 model on images that score beyond this one, or explain the float model`
  );
}

/**
 * One image through the graph: `input`, `target` = −1 (the top-1 class) → `{map [h·w], width, height, classIndex,
 * label, score, probability (null for raw scores), warning (a blank map's cause, or null), input, ms}`; `ms` is the
 * session run alone.
 */
export async function explain(ort, session, info, rgb, width, height, method) {
  const [h, w] = info.preprocess.input_size;
  const input = toInput(rgb, width, height, info.preprocess);
  const feeds = {
    input: new ort.Tensor("float32", input, [1, 3, h, w]),
    target: new ort.Tensor("int64", BigInt64Array.of(-1n), [1]),
  };
  const started = performance.now();
  const limited = info.scoreLimits ? info.gradients : []; // fetched only to tell a clipped int8 score
  const out = await session.run(feeds, ["scores", "target_used", `cam:${method}`, ...limited]);
  const ms = performance.now() - started;
  const classIndex = Number(out.target_used.data[0]);
  const scores = perClass(out.scores.data, out.scores.dims);
  const probs = probabilities(scores, info.scoresKind);
  const positions = out.scores.data.length / out.scores.dims[1];
  const explained = out.scores.data.subarray(classIndex * positions, (classIndex + 1) * positions);
  const gradients = limited.map((name) => out[name].data);
  return {
    map: out[`cam:${method}`].data,
    width: w,
    height: h,
    classIndex,
    label: info.labels ? info.labels[classIndex] : null,
    score: scores[classIndex],
    probability: probs ? probs[classIndex] : null,
    warning: clipWarning(info.scoreLimits, explained, gradients, out[`cam:${method}`].data, method),
    input,
    ms,
  };
}

// cv2.COLORMAP_JET as RGB, 256 entries: bytes(cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None],
// cv2.COLORMAP_JET)[:, 0, ::-1]).hex()
const JET_HEX =
  "00008000008400008800008c00009000009400009800009c0000a00000a40000a80000ac0000b00000b40000b80000bc" +
  "0000c00000c40000c80000cc0000d00000d40000d80000dc0000e00000e40000e80000ec0000f00000f40000f80000fc" +
  "0000ff0004ff0008ff000cff0010ff0014ff0018ff001cff0020ff0024ff0028ff002cff0030ff0034ff0038ff003cff" +
  "0040ff0044ff0048ff004cff0050ff0054ff0058ff005cff0060ff0064ff0068ff006cff0070ff0074ff0078ff007cff" +
  "0080ff0084ff0088ff008cff0090ff0094ff0098ff009cff00a0ff00a4ff00a8ff00acff00b0ff00b4ff00b8ff00bcff" +
  "00c0ff00c4ff00c8ff00ccff00d0ff00d4ff00d8ff00dcff00e0ff00e4ff00e8ff00ecff00f0ff00f4ff00f8ff00fcff" +
  "02fffe06fffa0afff60efff212ffee16ffea1affe61effe222ffde26ffda2affd62effd232ffce36ffca3affc63effc2" +
  "42ffbe46ffba4affb64effb252ffae56ffaa5affa65effa262ff9e66ff9a6aff966eff9272ff8e76ff8a7aff867eff82" +
  "82ff7e86ff7a8aff768eff7292ff6e96ff6a9aff669eff62a2ff5ea6ff5aaaff56aeff52b2ff4eb6ff4abaff46beff42" +
  "c2ff3ec6ff3acaff36ceff32d2ff2ed6ff2adaff26deff22e2ff1ee6ff1aeaff16eeff12f2ff0ef6ff0afaff06feff01" +
  "fffc00fff800fff400fff000ffec00ffe800ffe400ffe000ffdc00ffd800ffd400ffd000ffcc00ffc800ffc400ffc000" +
  "ffbc00ffb800ffb400ffb000ffac00ffa800ffa400ffa000ff9c00ff9800ff9400ff9000ff8c00ff8800ff8400ff8000" +
  "ff7c00ff7800ff7400ff7000ff6c00ff6800ff6400ff6000ff5c00ff5800ff5400ff5000ff4c00ff4800ff4400ff4000" +
  "ff3c00ff3800ff3400ff3000ff2c00ff2800ff2400ff2000ff1c00ff1800ff1400ff1000ff0c00ff0800ff0400ff0000" +
  "fc0000f80000f40000f00000ec0000e80000e40000e00000dc0000d80000d40000d00000cc0000c80000c40000c00000" +
  "bc0000b80000b40000b00000ac0000a80000a40000a000009c00009800009400009000008c0000880000840000800000";
const JET = Uint8Array.from(JET_HEX.match(/../g), (b) => parseInt(b, 16));

/**
 * The heat map over the image at the image's size, as onnxcam.visual.overlay: the map resized bilinearly, JET,
 * `alpha·heat + (1 − alpha)·image`, divided by its peak → RGBA uint8 `[H, W, 4]` (opaque).
 */
export function overlay(rgb, width, height, map, mapWidth, mapHeight, alpha = 0.5) {
  const f = Math.fround;
  const mask = resizeLinearF32(map, mapWidth, mapHeight, width, height);
  const [a, b] = [f(alpha), f(1 - alpha)];
  const cam = new Float32Array(width * height * 3);
  let peak = 0;
  for (let i = 0; i < width * height; i++) {
    const m = Number.isNaN(mask[i]) ? 0 : Math.min(1, Math.max(0, mask[i]));
    const level = Math.trunc(f(255 * m));
    for (let c = 0; c < 3; c++) {
      const v = f(f(a * f(JET[level * 3 + c] / 255)) + f(b * f(rgb[i * 3 + c] / 255)));
      cam[i * 3 + c] = v;
      if (v > peak) peak = v;
    }
  }
  const out = new Uint8ClampedArray(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    for (let c = 0; c < 3; c++) {
      const v = cam[i * 3 + c];
      out[i * 4 + c] = Math.trunc(f(255 * (peak > 0 ? f(v / peak) : v)));
    }
    out[i * 4 + 3] = 255;
  }
  return out;
}
