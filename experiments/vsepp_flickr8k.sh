#!/usr/bin/env bash
# VSE++ on Flickr8k: the levers of the VSE++ paper and this machine, each trained on train and
# compared on dev; the setting with the best dev rsum is evaluated once on test.
# Regenerates results/vsepp-flickr8k/ (dev-levers.json/.md, test.json with every query's rank,
# curves, machine.json). Re-running resumes an unfinished run and reuses a finished one.
#
#   bash experiments/vsepp_flickr8k.sh              # features, the default levers, test of the chosen one
#   LEVERS="bert ft1-crop" bash experiments/vsepp_flickr8k.sh   # a subset
#   LEVERS="lite2-mean@s1" bash experiments/vsepp_flickr8k.sh   # a lever with seed 1 (run <lever>-s1)
#   bash experiments/vsepp_flickr8k.sh joined       # the joined-networks stage (JOINED_LEVERS), its own folders
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
# and the image side as an ensemble of the three EfficientNet-Lite networks: a joined extractor
# (a+b+c, xmr/features/image.py) whose pooled vectors are the parts' side by side (3 x 1280-d),
# each with the mean-pooled text head of lite2-mean (its runs take a minute):
#   j012-mean     Lite0 at 224^2 + Lite1 at 240^2 + Lite2 at 260^2 (each at its ImageNet size)
#   j012hr-mean   Lite0 and Lite1 at 288^2 (9 x 9 grids, as Lite2's) + Lite2 at 260^2
#   j012x-mean    Lite0 and Lite1 at 288^2 + Lite2 at 330^2
#   j6-mean       all six of the above side by side (Lite0 224+288, Lite1 240+288, Lite2 260+330)
#   j012x-mean-1024  j012x-mean with a 1024-d joint space (the VSE++ paper's) instead of 512
#   j012x-mean-1024-d2  j012x-mean-1024, 5 epochs, the learning rate divided by 10 after 2 (its
#                 runs peak at epoch 2-3, before the default decay)
#   j012x-mean-2048  j012x-mean with a 2048-d joint space
#   j012x-mean-2048-d2  both: 2048-d, the decay after epoch 2
#   j012x-2048-d2  j012x-mean-2048-d2 with the BiGRU text head (cpu-bert as it is; 37.8M parameters,
#                 a 2048-d BiGRU: its first epoch had not ended after 7 minutes here, not run)
# `bash experiments/vsepp_flickr8k.sh joined` runs them (JOINED_LEVERS) into runs/vsepp-f8k-joined and
# results/vsepp-flickr8k/joined, beside the stage above.
set -euo pipefail
JOINED_LEVERS="lite2-mean lite2-mean@s1 j012-mean j012hr-mean j012hr-mean@s1 j012x-mean j012x-mean@s1 j6-mean
  j6-mean@s1 j012x-mean-1024 j012x-mean-1024@s1 j012x-mean-1024-d2 j012x-mean-1024-d2@s1 j012x-mean-2048
  j012x-mean-2048@s1 j012x-mean-2048-d2 j012x-mean-2048-d2@s1"
cd "$(dirname "$0")/.."
XMR=.venv/bin/xmr
if [[ ${1:-} == joined ]]; then  # the joined-networks stage, in its own folders
  RUNS=${RUNS:-runs/vsepp-f8k-joined} OUT=${OUT:-results/vsepp-flickr8k/joined}
  LEVERS=${LEVERS:-"$JOINED_LEVERS"}
fi
RUNS=${RUNS:-runs/vsepp-f8k-levers}
OUT=${OUT:-results/vsepp-flickr8k}
LEVERS=${LEVERS:-"bert ft1-crop lite2"}
mkdir -p "$OUT" "$RUNS"

train() {  # name, preset, extractor, then any --set KEY=VALUE overrides (seed: the lever's @sN)
  local name=$1$SUFFIX preset=$2 extractor=$3; shift 3
  $XMR features flickr8k --extractor "$extractor" --threads "${THREADS:-2}" > /dev/null
  $XMR train --model vsepp --preset "$preset" --data flickr8k --extractor "$extractor" --out "$RUNS/$name" \
    --seed "$SEED" --threads "${THREADS:-2}" --quiet --resume "$@" >> "$RUNS/$name.log" 2>&1
}
BUDGET="--set epochs=8 --set lr_decay_epochs=[5]"
L0=efficientnet-lite0 L1=efficientnet-lite1 L2=efficientnet-lite2
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
    j012-mean) train j012-mean cpu-bert $L0-224+$L1-240+$L2-260 $BUDGET --set text_pool=mean ;;
    j012hr-mean) train j012hr-mean cpu-bert $L0-288+$L1-288+$L2-260 $BUDGET --set text_pool=mean ;;
    j012x-mean) train j012x-mean cpu-bert $L0-288+$L1-288+$L2-330 $BUDGET --set text_pool=mean ;;
    j6-mean) train j6-mean cpu-bert $L0-224+$L0-288+$L1-240+$L1-288+$L2-260+$L2-330 $BUDGET --set text_pool=mean ;;
    j012x-mean-1024) train j012x-mean-1024 cpu-bert $L0-288+$L1-288+$L2-330 $BUDGET --set text_pool=mean \
      --set embed_dim=1024 ;;
    j012x-mean-1024-d2) train j012x-mean-1024-d2 cpu-bert $L0-288+$L1-288+$L2-330 --set epochs=5 \
      --set lr_decay_epochs=[2] --set text_pool=mean --set embed_dim=1024 ;;
    j012x-mean-2048) train j012x-mean-2048 cpu-bert $L0-288+$L1-288+$L2-330 $BUDGET --set text_pool=mean \
      --set embed_dim=2048 ;;
    j012x-mean-2048-d2) train j012x-mean-2048-d2 cpu-bert $L0-288+$L1-288+$L2-330 --set epochs=5 \
      --set lr_decay_epochs=[2] --set text_pool=mean --set embed_dim=2048 ;;
    j012x-2048-d2) train j012x-2048-d2 cpu-bert $L0-288+$L1-288+$L2-330 --set epochs=5 --set lr_decay_epochs=[2] \
      --set embed_dim=2048 ;;
    *) echo "unknown lever $lever" >&2; exit 2 ;;
  esac
done

.venv/bin/python experiments/vsepp_levers.py "$RUNS" "$OUT"
CHOSEN=$(cat "$OUT/chosen.txt")
$XMR eval "$RUNS/$CHOSEN" --split test --json "$OUT/test.json"
cp "$RUNS/$CHOSEN/metrics.jsonl" "$RUNS/$CHOSEN/curve.png" "$RUNS/$CHOSEN/config.json" "$OUT/"
.venv/bin/python -c "import json; from xmr.machine import machine_info; print(json.dumps(machine_info()))" > "$OUT/machine.json"
