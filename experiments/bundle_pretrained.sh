#!/usr/bin/env bash
# The pretrained model shipped in the package (xmr/bundled/vsepp-flickr8k): the smallest VSE++ run
# that dev cannot tell from the chosen one (bundle.txt of experiments/vsepp_flickr8k.sh), exported
# with float16 weights, then evaluated once on the Flickr8k test split as shipped (test-metrics.json
# beside the weights). Run after that script.
set -euo pipefail
cd "$(dirname "$0")/.."
XMR=.venv/bin/xmr
RUNS=${RUNS:-runs/vsepp-f8k-levers}
OUT=xmr/bundled/vsepp-flickr8k
BUNDLE=$(cat results/vsepp-flickr8k/bundle.txt)
$XMR export "$RUNS/$BUNDLE" --out "$OUT"
$XMR eval pretrained --split test --threads "${THREADS:-2}" --json "$OUT/test-metrics.json"
.venv/bin/python -c "import json; from xmr.machine import machine_info; print(json.dumps(machine_info()))" > "$OUT/machine.json"
