#!/usr/bin/env bash
# A separate virtual environment with Hugging Face `transformers` (JAX/Flax classes, no PyTorch:
# PyPI's torch wheel pulls several GB of CUDA libraries), so the tests can load Berth's
# Hugging Face export with the real library. Built once per version set, outside the repo:
# ${BERTH_CACHE_DIR:-~/.cache/berth}/hf-venv-<versions>. Prints the venv's python.
# (transformers 5 dropped its JAX classes, hence <5.)
set -euo pipefail
packages=("transformers==4.57.6" "jax[cpu]==0.10.2" "flax==0.12.8" "safetensors==0.8.0")
cache=${BERTH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/berth}
key=$(printf '%s\n' "${packages[@]}" | sha256sum | cut -c1-12)
venv=$cache/hf-venv-$key
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.installed" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q "${packages[@]}" >&2
  touch "$venv/.installed"
fi
echo "$venv/bin/python"
