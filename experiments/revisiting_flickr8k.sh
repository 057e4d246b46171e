#!/usr/bin/env bash
# "Revisiting Cross Modal Retrieval" on Flickr8k: one network for images and encoded sentences,
# both data configurations of Sec. 4.1 (cpu presets: config-standard and config-2), each evaluated
# by Euclidean nearest neighbours on test with the k-shot table and diagnosed
# (experiments/revisiting_diagnose.py: does the network learn both modalities?), plus the t-SNE of
# Figure 3 and an encoded sentence picture. Regenerates results/revisiting-flickr8k/. Resumes and reuses runs.
#   bash experiments/revisiting_flickr8k.sh      (~1 h per configuration on 2 free cores)
# CONFIGS picks the configurations (default "standard config2"); to use both cores for the two
# trainings, run them side by side, one thread each:
#   CONFIGS=standard THREADS=1 bash experiments/revisiting_flickr8k.sh &
#   CONFIGS=config2 THREADS=1 bash experiments/revisiting_flickr8k.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=revisiting
source experiments/common.sh
RUNS=${RUNS:-runs/revisiting-f8k}
OUT=results/revisiting-flickr8k
mkdir -p "$OUT" "$RUNS"
for config in ${CONFIGS:-standard config2}; do
  PRESET=cpu; [ "$config" = config2 ] && PRESET=cpu-config2
  train "$config"
  evaluate "$config" "$OUT/test-$config.json" --kshot 0 1 5
  cp "$RUNS/$config/metrics.jsonl" "$OUT/metrics-$config.jsonl"
  cp "$RUNS/$config/curve.png" "$OUT/curve-$config.png"
  [ -f "$OUT/diagnose-$config.json" ] || .venv/bin/python experiments/revisiting_diagnose.py "$RUNS/$config" \
    "$OUT/diagnose-$config.json" --threads "${THREADS:-2}" >> "$RUNS/$config.log" 2>&1
done
[ ! -f "$OUT/test-standard.json" ] || .venv/bin/python experiments/revisiting_figures.py "$RUNS/standard" "$OUT"
.venv/bin/python -c "import json; from xmr.machine import machine_info; print(json.dumps(machine_info()))" > "$OUT/machine.json"
