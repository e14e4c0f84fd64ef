// Drive the page in headless Chromium as a user would (pick the explainer file, pick an image) and write what it
// computed as JSON: class, label, probability, the map / input tensor / overlay as base64 bytes, the session-run time.
//
//   node web/drive.mjs --url http://127.0.0.1:8000/web/index.html --model m.onnx --image photo.png --out r.json
//                      [--method gradcam] [--screenshot docs/web.png] [--time 20] [--chromium /usr/bin/chromium]
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";

import puppeteer from "puppeteer-core";

const { values } = parseArgs({
  options: {
    url: { type: "string" },
    model: { type: "string" },
    image: { type: "string" },
    method: { type: "string", default: "" },
    out: { type: "string" },
    screenshot: { type: "string", default: "" },
    time: { type: "string", default: "0" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
  },
});

const browser = await puppeteer.launch({
  executablePath: values.chromium,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 900, height: 400 });
  const log = [];
  page.on("console", (message) => log.push(message.text()));
  page.on("pageerror", (error) => log.push(String(error)));
  await page.goto(values.url, { waitUntil: "load" });
  const done = "window.onnxcamResult || window.onnxcamError";
  await (await page.$("#model")).uploadFile(values.model);
  await page.waitForFunction("!document.querySelector('#image').disabled || window.onnxcamError", { timeout: 120000 });
  if (values.method) await page.select("#method", values.method);
  await (await page.$("#image")).uploadFile(values.image);
  await page.waitForFunction(done, { timeout: 120000 });
  const result = await page.evaluate(() => {
    const base64 = (array) => {
      const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
      let text = "";
      for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      return btoa(text);
    };
    if (window.onnxcamError) return { error: window.onnxcamError };
    const r = window.onnxcamResult;
    return {
      class: r.classIndex,
      label: r.label,
      probability: r.probability,
      method: r.method,
      ms: r.ms,
      shape: [r.height, r.width],
      image_shape: [r.imageHeight, r.imageWidth],
      map: base64(r.map),
      input: base64(r.input),
      overlay: base64(r.overlay),
      text: document.querySelector("#result").textContent,
    };
  });
  if (Number(values.time) > 0 && !result.error) {
    await page.evaluate(() => window.onnxcamTime(2)); // warm-up
    result.median_ms = await page.evaluate((n) => window.onnxcamTime(n), Number(values.time));
  }
  if (values.screenshot) await page.screenshot({ path: values.screenshot, fullPage: true });
  result.console = log;
  writeFileSync(values.out, JSON.stringify(result));
} finally {
  await browser.close();
}
