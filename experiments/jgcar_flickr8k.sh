#!/usr/bin/env bash
# JGCAR on Flickr8k (keyword labels from the captions, xmr/data/keyword_labels.py): the joint model
# (cpu preset) with exhaustive and two-step test evaluation (the K-curve), then the variants of
# Tables 1-3 on a reduced budget: GRL (beta = 1), SGCAR (a separately trained co-attention,
# beta = 0, re-ranking GRL's shortlist), JGCAR, JGCAR^v1 (no J2, J3) and JGCAR^v2 (no J4), each at
# d = 8, 16, 256; all evaluated by two-step retrieval, K = 100, with R@20/50/100.
# Regenerates results/jgcar-flickr8k/. Re-running resumes unfinished runs and reuses finished ones.
#   bash experiments/jgcar_flickr8k.sh [dev|main|variants|all]   (default all)
# dev: the short dev trials that chose the cpu preset's negatives and learning rate
# (1,000 training images, 2 epochs, dev rsum on 300 images) -> results/jgcar-flickr8k/dev-trials.json
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=jgcar PRESET=cpu
source experiments/common.sh
RUNS=${RUNS:-runs/jgcar-f8k}
OUT=results/jgcar-flickr8k
VAR_IMAGES=${VAR_IMAGES:-1000}
VAR_EPOCHS=${VAR_EPOCHS:-2}
STAGE=${1:-all}
mkdir -p "$OUT" "$RUNS"
$XMR features flickr8k >/dev/null

if [ "$STAGE" = dev ] || [ "$STAGE" = all ]; then
  DEV_RUNS=runs/jgcar-dev
  trial() {  # name, then overrides
    local name=$1; shift
    RUNS=$DEV_RUNS train "$name" --set train_images=1000 --set epochs=2 --set dev_images=300 "$@"
  }
  mkdir -p "$DEV_RUNS"
  trial hard-false --set hard_negatives=false --set lr=2e-4
  trial hard-true --set hard_negatives=true --set lr=2e-4
  trial hard-lr1e-3 --set hard_negatives=true --set lr=1e-3
  trial hard-lr3e-3 --set hard_negatives=true --set lr=3e-3
  .venv/bin/python -c "
import json, sys
rows = {n: json.load(open(f'$DEV_RUNS/{n}/best.json'))['dev']['rsum'] for n in sys.argv[1:]}
print(json.dumps(rows, indent=1))" hard-false hard-true hard-lr1e-3 hard-lr3e-3 > "$OUT/dev-trials.json"
fi
if [ "$STAGE" = main ] || [ "$STAGE" = all ]; then
  train joint
  evaluate joint "$OUT/test.json" --two-step 10 20 50 100 200 --plot "$OUT/k_curve.png"
  cp "$RUNS/joint/metrics.jsonl" "$RUNS/joint/curve.png" "$RUNS/joint/config.json" "$OUT/"
  .venv/bin/python experiments/jgcar_attention.py "$RUNS/joint" "$OUT/attention.png"
fi
[ "$STAGE" = variants ] || [ "$STAGE" = all ] || exit 0

VAR=(--set "train_images=$VAR_IMAGES" --set "epochs=$VAR_EPOCHS" --set dev_images=300)
variant() {  # name, then overrides
  local name=$1; shift
  train "$name" "${VAR[@]}" "$@"
  evaluate "$name" "$RUNS/$name/test-k100.json" --two-step 100 --no-exhaustive
}
variant grl --set beta=1
variant coattention --set beta=0 --set dev_rerank_k=0  # its own global part is untrained: validate exhaustively
evaluate coattention "$RUNS/coattention/test-sgcar-k100.json" --two-step 100 --no-exhaustive --first-stage "$RUNS/grl"
variant jgcar-d256
variant v1-d256 --set lambda2=0 --set lambda3=0
variant v2-d256 --set lambda4=0
for d in 8 16; do
  variant "v1-d$d" --set lambda2=0 --set lambda3=0 --set d=$d
  variant "v2-d$d" --set lambda4=0 --set d=$d
  variant "jgcar-d$d" --set d=$d
done
.venv/bin/python experiments/ablation_table.py "$OUT/variants" \
  "JGCAR variants (Flickr8k test, $VAR_IMAGES training images, $VAR_EPOCHS epochs, two-step K = 100)" \
  "GRL=$RUNS/grl/test-k100.json" "SGCAR=$RUNS/coattention/test-sgcar-k100.json" \
  "JGCAR d=256=$RUNS/jgcar-d256/test-k100.json" "JGCAR^v1 d=256=$RUNS/v1-d256/test-k100.json" \
  "JGCAR^v2 d=256=$RUNS/v2-d256/test-k100.json" "JGCAR^v1 d=16=$RUNS/v1-d16/test-k100.json" \
  "JGCAR^v2 d=16=$RUNS/v2-d16/test-k100.json" "JGCAR^v1 d=8=$RUNS/v1-d8/test-k100.json" \
  "JGCAR^v2 d=8=$RUNS/v2-d8/test-k100.json" "JGCAR d=16=$RUNS/jgcar-d16/test-k100.json" \
  "JGCAR d=8=$RUNS/jgcar-d8/test-k100.json"
.venv/bin/python -c "import json; from xmr.machine import machine_info; print(json.dumps(machine_info()))" > "$OUT/machine.json"
