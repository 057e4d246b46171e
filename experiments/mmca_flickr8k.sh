#!/usr/bin/env bash
# MMCA on Flickr8k: the full model (cpu preset), its exhaustive 1K x 5K test evaluation and the
# two-step K-curve, then the alpha (Table 6) and d (Tables 4-5) ablations on a reduced budget.
# Regenerates results/mmca-flickr8k/. Re-running resumes unfinished runs and reuses finished ones.
#   bash experiments/mmca_flickr8k.sh [main|alpha|d|all]   (default all)
# The VSE++ first-stage comparison reuses experiments/vsepp_flickr8k.sh's chosen run (trained if absent).
#   full model: ~6 epochs x 8 min + ~10 min exhaustive test on 2 cores
#   ablations:  first ABL_IMAGES training images, ABL_EPOCHS epochs each, evaluated on test by
#               two-step retrieval (own i0.c0 shortlist of ABL_K = 20, re-ranked by S; the full
#               model's K-curve shows K = 20 within 1 rsum of exhaustive at a 25th of the time)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=mmca PRESET=cpu
source experiments/common.sh
RUNS=${RUNS:-runs/mmca-f8k}
OUT=results/mmca-flickr8k
ABL_IMAGES=${ABL_IMAGES:-1000}
ABL_EPOCHS=${ABL_EPOCHS:-2}
ABL_K=${ABL_K:-20}
STAGE=${1:-all}
VSEPP_RUN=${VSEPP_RUNS:-runs/vsepp-f8k-levers}/$(cat results/vsepp-flickr8k/chosen.txt)  # experiments/vsepp_flickr8k.sh
mkdir -p "$OUT" "$RUNS"
$XMR features flickr8k >/dev/null

# 1. The full model: exhaustive test (every image x caption through the cross branch) and two-step
#    with MMCA's own i0.c0 as first stage, and with VSE++ as first stage.
if [ "$STAGE" = main ] || [ "$STAGE" = all ]; then
  train full
  evaluate full "$OUT/test.json" --two-step 10 20 50 100 200 --plot "$OUT/k_curve.png"
  [ -f "$VSEPP_RUN/best.json" ] || bash experiments/vsepp_flickr8k.sh
  evaluate full "$OUT/test-vsepp-first-stage.json" --two-step 20 100 --no-exhaustive --first-stage "$VSEPP_RUN"
  cp "$RUNS/full/metrics.jsonl" "$RUNS/full/curve.png" "$RUNS/full/config.json" "$OUT/"
fi

# 2. Ablations on the reduced budget: alpha (Table 6), then d (Tables 4-5; d = 64 is alpha-0.2).
ABL=(--set "train_images=$ABL_IMAGES" --set "epochs=$ABL_EPOCHS" --set "lr_decay_epochs=[$ABL_EPOCHS]")
alpha_rows=() d_rows=()
if [ "$STAGE" = alpha ] || [ "$STAGE" = d ] || [ "$STAGE" = all ]; then
  for a in 0 0.1 0.2 0.4 0.8; do
    train "alpha-$a" "${ABL[@]}" --set alpha=$a
    evaluate "alpha-$a" "$RUNS/alpha-$a/test-k$ABL_K.json" --two-step $ABL_K --no-exhaustive
    alpha_rows+=("alpha=$a=$RUNS/alpha-$a/test-k$ABL_K.json")
  done
  .venv/bin/python experiments/ablation_table.py "$OUT/ablation-alpha" \
    "MMCA alpha ablation (Flickr8k test, $ABL_IMAGES training images, $ABL_EPOCHS epochs)" "${alpha_rows[@]}"
fi
[ "$STAGE" = d ] || [ "$STAGE" = all ] || exit 0
for d in 64 128 256 512; do
  name="d-$d"; [ "$d" = 64 ] && name="alpha-0.2"  # the cpu preset's d = 64 is the alpha = 0.2 run
  if [ "$d" != 64 ]; then
    train "$name" "${ABL[@]}" --set d=$d --set ff_dim=$d --set filters=$d
    evaluate "$name" "$RUNS/$name/test-k$ABL_K.json" --two-step $ABL_K --no-exhaustive
  fi
  d_rows+=("d=$d=$RUNS/$name/test-k$ABL_K.json")
done
.venv/bin/python experiments/ablation_table.py "$OUT/ablation-d" \
  "MMCA d ablation (Flickr8k test, $ABL_IMAGES training images, $ABL_EPOCHS epochs)" "${d_rows[@]}"
.venv/bin/python -c "import json; from xmr.machine import machine_info; print(json.dumps(machine_info()))" > "$OUT/machine.json"
