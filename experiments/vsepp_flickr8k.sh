#!/usr/bin/env bash
# VSE++ on Flickr8k: features -> train (cpu preset, checkpoint chosen on dev rsum) -> test.
# Regenerates results/vsepp-flickr8k/ (about 25 min on 2 cores, plus 3 min of features once).
set -euo pipefail
cd "$(dirname "$0")/.."
XMR=.venv/bin/xmr
RUN=${RUN:-runs/vsepp-f8k}
OUT=results/vsepp-flickr8k
mkdir -p "$OUT"
$XMR features flickr8k
$XMR train --model vsepp --preset cpu --data flickr8k --out "$RUN" --quiet
$XMR eval "$RUN" --split test --json "$OUT/test.json"
cp "$RUN/metrics.jsonl" "$RUN/curve.png" "$RUN/config.json" "$OUT/"
.venv/bin/python -c "import json; from xmr.machine import machine_info; print(json.dumps(machine_info()))" > "$OUT/machine.json"
