#!/usr/bin/env bash
# Tools of the JavaScript runtimes (web/ page, examples/explain.mjs) and of tests/test_web.py: Chromium (the Debian
# package; no browser download) and web/node_modules (onnxruntime-web, onnxruntime-node, sharp, puppeteer-core, pinned
# in web/package-lock.json). Installs what is missing with apt (as root) and npm; exits non-zero when it cannot (the
# tests then skip, naming what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v npm >/dev/null || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# onnxruntime-node ships its CPU binaries; its postinstall would fetch CUDA ones from api.nuget.org.
(cd web && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error)
