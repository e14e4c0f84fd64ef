// Explain an image with an in-graph explainer file in Node.js (onnxruntime-node): no Python, one session run.
//
//   cd web && npm ci && cd ..
//   node examples/explain.mjs model.onnx photo.jpg --method gradcam --out out/photo
//
// writes out/photo.npy (the map, float32 [H, W] in [0, 1] at the network's input size) and out/photo.png (the
// overlay at the photo's size), and prints one JSON line: class, label, probability, method, ms (the session run);
// a map left blank by an int8 score clipped at its quantization range is said on stderr.
// The model must be exported with `onnxcam export … --in-graph gradcam[,…]`. Images are decoded by sharp (EXIF
// orientation applied, alpha dropped, grey replicated to RGB), then preprocessed as web/onnxcam.js says.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { parseArgs } from "node:util";

import { explain, explainerInfo, overlay, readMetadata } from "../web/onnxcam.js";

const require = createRequire(new URL("../web/package.json", import.meta.url)); // packages live in web/node_modules
const ort = require("onnxruntime-node");
const sharp = require("sharp");

/** A float32 array `[rows, cols]` as the bytes of a NumPy .npy file (format 1.0). */
function npy(values, rows, cols) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${rows}, ${cols}), }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n"; // magic + header length a multiple of 64
  const head = Buffer.alloc(10);
  head.write("\x93NUMPY", 0, "latin1");
  head.writeUInt8(1, 6);
  head.writeUInt16LE(header.length, 8);
  const data = Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  return Buffer.concat([head, Buffer.from(header, "latin1"), data]);
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { method: { type: "string", default: "" }, out: { type: "string", default: "" } },
  });
  if (positionals.length !== 2) throw new Error("usage: explain.mjs MODEL.onnx IMAGE [--method M] [--out PREFIX]");
  const [modelPath, imagePath] = positionals;
  const named = (path) => (error) => {
    throw new Error(`${path}: ${error.message}`); // one line naming the input at fault
  };
  const bytes = readFileSync(modelPath);
  const session = await ort.InferenceSession.create(bytes, { logSeverityLevel: 3 }).catch(named(modelPath));
  const info = explainerInfo(readMetadata(bytes), session.outputNames);
  const method = values.method || info.methods[0];
  if (!info.methods.includes(method)) {
    throw new Error(`${modelPath} has no in-graph ${method}: it has ${info.methods.join(", ")}`);
  }
  const decoded = await sharp(imagePath).rotate().removeAlpha().toColourspace("srgb").raw();
  const { data, info: size } = await decoded.toBuffer({ resolveWithObject: true }).catch(named(imagePath));
  const result = await explain(ort, session, info, data, size.width, size.height, method);
  if (values.out) {
    mkdirSync(dirname(values.out) || ".", { recursive: true });
    writeFileSync(`${values.out}.npy`, npy(result.map, result.height, result.width));
    const rgba = overlay(data, size.width, size.height, result.map, result.width, result.height);
    await sharp(Buffer.from(rgba.buffer), { raw: { width: size.width, height: size.height, channels: 4 } })
      .removeAlpha()
      .png()
      .toFile(`${values.out}.png`);
  }
  if (result.warning) console.error(`explain.mjs: ${imagePath}: ${result.warning}`);
  const { classIndex, label, probability, ms } = result;
  console.log(JSON.stringify({ class: classIndex, label, probability, method, ms }));
}

main().catch((error) => {
  console.error(`explain.mjs: ${error.message}`);
  process.exit(1);
});
