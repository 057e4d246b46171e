#!/usr/bin/env bash
# "Revisiting Cross Modal Retrieval" on Flickr8k: one network for images and encoded sentences.
# Regenerates results/revisiting-flickr8k/. Stages (default: all, in this order):
#   probe   how much of a caption picture survives the frozen ImageNet prefix, per resolution,
#           layout and cut (experiments/revisiting_text_probe.py -> text-probe.json; ~8 min)
#   trials  training choices on dev, from the cached frozen prefix (experiments/revisiting_tail_trials.py
#           -> tail-trials.{json,md}; 6-25 min per trial of 4 epochs on the whole training split)
#   main    the cpu presets, config standard and config 2 at the same epochs (xmr train, ~5 min per
#           epoch for standard, twice for config 2; test with the k-shot table; diagnosis, t-SNE,
#           encoded sentence); CONFIGS picks the configurations (default "standard config2")
#   bash experiments/revisiting_flickr8k.sh [probe|trials|main ...]
# Resumes and reuses runs and finished trials; results that exist are kept. THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=revisiting
source experiments/common.sh
RUNS=${RUNS:-runs/revisiting-f8k}
OUT=results/revisiting-flickr8k
mkdir -p "$OUT" "$RUNS"
PY=.venv/bin/python

probe() {
  [ -f "$OUT/text-probe.json" ] || $PY experiments/revisiting_text_probe.py "$OUT/text-probe.json" --threads "${THREADS:-2}"
  [ -f "$OUT/bag-reference.json" ] || $PY experiments/revisiting_bag_reference.py "$OUT/bag-reference.json" \
    --threads "${THREADS:-2}"
}

trials() {
  $PY experiments/revisiting_tail_trials.py "$OUT/tail-trials.json" --epochs 4 \
    --threads "${THREADS:-2}" --maps "$RUNS/maps" \
    --trial caption-linear text_grid=4 \
    --trial image-linear text_grid=4 batch_by=image \
    --trial caption-centres text_grid=4 normalize=true classifier=centres \
    --trial image-centres-before-224 text_grid=4 normalize=true classifier=centres batch_by=image \
      center_update=before image_resolution=224 \
    >> "$RUNS/trials.log" 2>&1
  $PY experiments/revisiting_tail_table.py "$OUT/tail-trials.json" "$OUT/tail-trials.md"
}

main_stage() {
  local config
  for config in ${CONFIGS:-standard config2}; do
    PRESET=cpu; [ "$config" = config2 ] && PRESET=cpu-config2
    train "$config"
    evaluate "$config" "$OUT/test-$config.json" --kshot 0 1 5
    cp "$RUNS/$config/metrics.jsonl" "$OUT/metrics-$config.jsonl"
    cp "$RUNS/$config/curve.png" "$OUT/curve-$config.png"
    [ -f "$OUT/diagnose-$config.json" ] || $PY experiments/revisiting_diagnose.py "$RUNS/$config" \
      "$OUT/diagnose-$config.json" --threads "${THREADS:-2}" >> "$RUNS/$config.log" 2>&1
  done
  [ ! -d "$RUNS/standard" ] || $PY experiments/revisiting_figures.py "$RUNS/standard" "$OUT"
  $PY experiments/revisiting_layouts.py docs/revisiting-layouts.png
}

for stage in ${@:-probe trials main}; do
  case $stage in
    probe) probe ;; trials) trials ;; main) main_stage ;;
    *) echo "unknown stage $stage (probe | trials | main)" >&2; exit 2 ;;
  esac
done
$PY -c "import json; from xmr.machine import machine_info; print(json.dumps(machine_info()))" > "$OUT/machine.json"
