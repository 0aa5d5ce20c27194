#!/usr/bin/env bash
# `make demo`: the quickstart, end to end, on this machine and no cluster.
#  1. write the deterministic quickstart corpus (grammar sentences) and its vocab.txt;
#  2. `berth run examples/quickstart.yaml`: 2 local workers pre-train a tiny BERT with MLM;
#  3. show top-5 predictions for masked sentences and the MLM accuracy before vs after.
set -euo pipefail
cd "$(dirname "$0")/.."
data=runs/quickstart-data
rm -rf runs/quickstart
.venv/bin/python -c 'import sys; from berth_trainer.synthetic import write_quickstart_corpus as w; w(sys.argv[1])' "$data"
.venv/bin/berth run examples/quickstart.yaml
# TensorFlow's C++ start-up chatter (absl/oneDNN/CUDA lines) is not for this screen.
.venv/bin/python hack/demo_report.py runs/quickstart/model \
  2> >(grep -v -E '^(I0000|W0000|E0000|WARNING: All log messages)' >&2)
