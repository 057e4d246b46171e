#!/usr/bin/env bash
# VSE++ on Flickr8k: the levers of the VSE++ paper and this machine, each trained on train and
# compared on dev; the setting with the best dev rsum is evaluated once on test.
# Regenerates results/vsepp-flickr8k/ (dev-levers.json/.md, test.json with every query's rank,
# curves, machine.json). Re-running resumes an unfinished run and reuses a finished one.
#
#   bash experiments/vsepp_flickr8k.sh              # features, the default levers, test of the chosen one
#   LEVERS="bert ft1-crop" bash experiments/vsepp_flickr8k.sh   # a subset
#   LEVERS="lite2-mean@s1" bash experiments/vsepp_flickr8k.sh   # a lever with seed 1 (run <lever>-s1)
#
# Levers (all read frozen MiniLM token states through a BiGRU, preset cpu-bert, 8 epochs with the
# learning rate divided by 10 after 5, unless named):
#   base          cpu preset: GloVe-initialised word embeddings instead of MiniLM states
#   bert          cpu-bert: frozen EfficientNet-Lite0 pooled features, linear projection
#   lite2         frozen EfficientNet-Lite2 (260^2) pooled features
#   lite2-mean    lite2 with the BiGRU replaced by a linear map of the mean-pooled MiniLM states
#                 (MiniLM's own sentence embedding), text_pool=mean
#   lite2-grumean lite2 with that projection added to the BiGRU's vector, text_pool=gru+mean
#   lite2-maxmean lite2-mean with the image side max-pooled: every 9x9 grid cell projected, then the
#                 element-wise max (image_pool=max, VSE-infinity's finding), instead of the mean cell
#   lite2-mean30  lite2-mean for 30 epochs, the learning rate divided by 10 after 20 (its epochs
#                 take seconds, not minutes)
# and VSE++'s fine-tuning ("FT"), started from a finished frozen-feature run as the paper does
# (its CNN tail at ImageNet weights computes exactly the frozen features, so step 0 scores as
# that run), 3 more epochs at lr 5e-5, hardest negatives throughout:
#   ft1           from bert: the last MBConv block + head of Lite0 trained on cached trunk activations
#   ft1-crop      ft1 with random crops of the cached activation maps (RC on the trunk)
#   ft1-cropflip  ft1-crop with horizontal flips of the maps as well
#   lite2-ft1-crop  from lite2: Lite2's last block + head, crops
# and the text side's fine-tuning, from lite2 with the same 3 epochs at lr 5e-5 (BERT's usual
# fine-tuning rate, so the tail trains at 1x: text_tail_lr_scale=1): MiniLM's top layer trained on
# cached layer-5 token states, which at its pretrained weights compute the frozen final states:
#   lite2-txt1    from lite2: MiniLM's last layer fine-tuned before the BiGRU
set -euo pipefail
cd "$(dirname "$0")/.."
XMR=.venv/bin/xmr
RUNS=${RUNS:-runs/vsepp-f8k-levers}
OUT=results/vsepp-flickr8k
LEVERS=${LEVERS:-"bert ft1-crop lite2"}
mkdir -p "$OUT" "$RUNS"

train() {  # name, preset, extractor, then any --set KEY=VALUE overrides (seed: the lever's @sN)
  local name=$1$SUFFIX preset=$2 extractor=$3; shift 3
  $XMR features flickr8k --extractor "$extractor" --threads "${THREADS:-2}" > /dev/null
  $XMR train --model vsepp --preset "$preset" --data flickr8k --extractor "$extractor" --out "$RUNS/$name" \
    --seed "$SEED" --threads "${THREADS:-2}" --quiet --resume "$@" >> "$RUNS/$name.log" 2>&1
}
BUDGET="--set epochs=8 --set lr_decay_epochs=[5]"
FT="--set image_input=trunk --set tail_blocks=1 --set warmup_epochs=0 --set epochs=3 --set lr=5e-5 --set lr_decay_epochs=[]"
for lever in $LEVERS; do
  SEED=0 SUFFIX=""
  if [[ $lever == *@s* ]]; then SEED=${lever##*@s} SUFFIX="-s$SEED" lever=${lever%@s*}; fi
  case $lever in
    base) train base cpu efficientnet-lite0-224 $BUDGET ;;
    bert) train bert cpu-bert efficientnet-lite0-224 $BUDGET ;;
    lite2) train lite2 cpu-bert efficientnet-lite2-260 $BUDGET ;;
    lite2-mean) train lite2-mean cpu-bert efficientnet-lite2-260 $BUDGET --set text_pool=mean ;;
    lite2-maxmean) train lite2-maxmean cpu-bert efficientnet-lite2-260 $BUDGET --set text_pool=mean \
      --set image_pool=max ;;
    lite2-mean30) train lite2-mean30 cpu-bert efficientnet-lite2-260 --set epochs=30 --set lr_decay_epochs=[20] \
      --set text_pool=mean ;;
    lite2-grumean) train lite2-grumean cpu-bert efficientnet-lite2-260 $BUDGET --set text_pool=gru+mean ;;
    ft1) train ft1 cpu-bert efficientnet-lite0-224 $FT --set init_from=$RUNS/bert ;;
    ft1-crop) train ft1-crop cpu-bert efficientnet-lite0-224 $FT --set init_from=$RUNS/bert --set augment=crop ;;
    ft1-cropflip) train ft1-cropflip cpu-bert efficientnet-lite0-224 $FT --set init_from=$RUNS/bert \
      --set augment=crop-flip ;;
    lite2-ft1-crop) train lite2-ft1-crop cpu-bert efficientnet-lite2-260 $FT --set init_from=$RUNS/lite2 \
      --set augment=crop ;;
    lite2-txt1) train lite2-txt1 cpu-bert efficientnet-lite2-260 --set text_tail_layers=1 --set init_from=$RUNS/lite2 \
      --set warmup_epochs=0 --set epochs=3 --set lr=5e-5 --set lr_decay_epochs=[] --set text_tail_lr_scale=1 ;;
    *) echo "unknown lever $lever" >&2; exit 2 ;;
  esac
done

.venv/bin/python experiments/vsepp_levers.py "$RUNS" "$OUT"
CHOSEN=$(cat "$OUT/chosen.txt")
$XMR eval "$RUNS/$CHOSEN" --split test --json "$OUT/test.json"
cp "$RUNS/$CHOSEN/metrics.jsonl" "$RUNS/$CHOSEN/curve.png" "$RUNS/$CHOSEN/config.json" "$OUT/"
.venv/bin/python -c "import json; from xmr.machine import machine_info; print(json.dumps(machine_info()))" > "$OUT/machine.json"
