#!/usr/bin/env bash
# JGCAR on Flickr8k, on the VSE++ baseline's inputs (EfficientNet-Lite2 9x9 grid cells at 260^2,
# frozen MiniLM token states as the words; keyword labels from the captions for J2 / J3,
# xmr/data/keyword_labels.py). Regenerates results/jgcar-flickr8k/. Re-running resumes unfinished
# runs and reuses finished ones.
#   bash experiments/jgcar_flickr8k.sh [trials|main|grl|seed|levers|txt1|levers-cpu|t2i-levers|variants|all]   (default all)
#   trials   the short dev trials that chose the cpu preset's lambda4 and gamma (2,000 training
#            images, 1 epoch, dev two-step K = 20) -> dev-trials.{md,json}
#   main     the cpu preset (6 epochs, ~3 min each on 2 cores); the re-rank's weight w of Omega
#            (score = co-attentive cosine + w Omega; w = 0 is the paper's) chosen on dev by two-step
#            K = 20 (the trained weights scored with each w: xmr eval --set global_weight=W); then
#            test at that w: exhaustive and two-step K = 10 ... 200, attention maps
#   grl      the same budget with beta = 1 (the global representation alone, GRL): the control for
#            "the co-attention improves on the global part"
#   seed     the main model again with seed 1 (the spread between seeds for the claims)
#   levers   the cpu preset with one working change each (full budget, dev two-step K = 20 at the
#            preset's chosen w) against the preset's own dev row -> dev-levers.{md,json},
#            dev-lever-NAME.json, metrics-lever-NAME.jsonl; the best on dev, if a lever, tested
#            once -> levers-chosen.txt, test-levers-chosen.json
#   txt1     the text side's fine-tuning, as VSE++'s lite2-txt1 (the baseline's chosen run): from the
#            finished main run, 3 more epochs at lr 5e-5 with MiniLM's last layer trained on cached
#            layer-5 states (text_tail_layers=1, at 1x the rate); its own w chosen on dev
#            (dev-txt1-global-weight.{md,json}, txt1-chosen-global-weight.txt), dev two-step K = 20
#            against the main run's row -> dev-txt1.{md,json}, dev-lever-txt1.json; if better on dev,
#            its test once -> test-txt1.json
#   levers-cpu  the cpu preset (w chosen by main) with one change each, full budget, dev two-step
#            K = 20 against the main run's row: mh (J1 with the hardest negative after 1 warm-up
#            epoch: J1's averaged hinge falls to ~0.007 by epoch 3, little signal left) and long
#            (9 epochs, decay after 6: dev still rose at the decay) -> dev-levers-cpu.{md,json};
#            the best on dev, if a lever, tested once -> levers-cpu-chosen.txt,
#            test-levers-cpu-chosen.json, and its seed 1 on dev -> dev-levers-cpu-seeds.{md,json}
#   t2i-levers  for the text->image gap, the cpu preset with one change each, full budget, each at
#            its own w chosen on dev (dev-NAME-global-weight.{md,json}, NAME-chosen-global-weight.txt),
#            against the main run's row -> dev-NAME.{md,json}, dev-lever-NAME.json; if better on
#            dev, its test once -> test-NAME.json, and its seed 1 on dev -> dev-NAME-seeds.{md,json}.
#            wm: S^ plus a linear projection of the mean MiniLM state (global_word_mean=true);
#            v1: lambda2 = lambda3 = 0 (JGCAR^v1 at the full budget); wm-mh: wm with J1 taking the
#            hardest negative after 1 warm-up epoch
#   variants Tables 1-3 on a reduced budget, 2 seeds each: GRL, SGCAR (co-attention trained alone,
#            re-ranking GRL's shortlist), JGCAR, JGCAR^v1 (no J2, J3), JGCAR^v2 (no J4); test by
#            two-step K = 20 at the chosen w
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=jgcar PRESET=cpu
source experiments/common.sh
EXTRACTOR=efficientnet-lite2-260
RUNS=${RUNS:-runs/jgcar-f8k}
OUT=results/jgcar-flickr8k
DEV_K=20
WEIGHTS=${WEIGHTS:-"0 0.5 1 2 4"}
STAGE=${1:-all}
mkdir -p "$OUT" "$RUNS"
$XMR features flickr8k --extractor $EXTRACTOR >/dev/null
on() { [ "$STAGE" = "$1" ] || [ "$STAGE" = all ]; }
chosen_w() { cat "$OUT/chosen-global-weight.txt"; }
keep_lever() {  # run name, file name, its dev json (with its first stage's dev metrics): copies into $OUT
  cp "$3" "$OUT/dev-lever-$2.json"
  cp "$RUNS/$1/metrics.jsonl" "$OUT/metrics-lever-$2.jsonl"
  cp "$RUNS/$1/config.json" "$OUT/config-lever-$2.json"
}
lever() {  # run name, table label, w, then overrides: trained, scored on dev at w, kept, a table row
  local name=$1 label=$2 w=$3; shift 3
  train "$name" --extractor $EXTRACTOR "$@"
  dev_eval "$name" "$RUNS/$name/dev-w-$w.json" --set global_weight="$w"
  keep_lever "$name" "$name" "$RUNS/$name/dev-w-$w.json"
  rows+=("$label, w $w=$OUT/dev-lever-$name.json")
}
best_on_dev() {  # NAME=DEV_JSON ... -> the first NAME with the highest two-step rsum
  .venv/bin/python -c "
import json, sys
rsum = lambda p: max(json.load(open(p))['two_step'], key=lambda r: r['k'])['rsum']
print(max((a.split('=', 1) for a in sys.argv[1:]), key=lambda nv: rsum(nv[1]))[0])" "$@"
}

if on trials; then
  TRIAL=(--extractor $EXTRACTOR --set train_images=2000 --set epochs=1)
  rows=()
  trial() {  # run name, table label, then overrides
    local name=$1 label=$2; shift 2
    RUNS=$RUNS/trials train "$name" "${TRIAL[@]}" "$@"
    RUNS=$RUNS/trials dev_eval "$name" "$RUNS/trials/$name/dev.json"
    rows+=("$label=$RUNS/trials/$name/dev.json")
  }
  mkdir -p "$RUNS/trials"
  trial l4-1e-4 "lambda4 1e-4, gamma 10" --set lambda4=1e-4
  trial l4-1e-5 "lambda4 1e-5, gamma 10 (the preset)" --set lambda4=1e-5
  trial l4-1e-5-g30 "lambda4 1e-5, gamma 30" --set lambda4=1e-5 --set gamma=30
  trial l4-1e-5-grl "lambda4 1e-5, beta 1 (GRL)" --set lambda4=1e-5 --set beta=1
  .venv/bin/python experiments/ablation_table.py "$OUT/dev-trials" \
    "JGCAR dev trials (2,000 training images, 1 epoch, dev two-step K=$DEV_K)" "${rows[@]}"
fi

if on main; then
  train joint --extractor $EXTRACTOR
  dev_sweep joint global_weight "$OUT/dev-global-weight" \
    "JGCAR re-rank weight of Omega on dev (score = cos(v_bar, s_bar) + w Omega, two-step K=$DEV_K)" $WEIGHTS \
    > "$OUT/chosen-global-weight.txt"
  cp "$RUNS/joint/dev-global_weight-$(chosen_w).json" "$OUT/dev-chosen.json"  # with its first stage's dev metrics
  evaluate joint "$OUT/test.json" --set global_weight="$(chosen_w)" --two-step 10 20 50 100 200 \
    --plot "$OUT/k_curve.png"
  cp "$RUNS/joint/metrics.jsonl" "$RUNS/joint/curve.png" "$RUNS/joint/config.json" "$OUT/"
  .venv/bin/python experiments/jgcar_attention.py "$RUNS/joint" "$OUT/attention.png" --set global_weight="$(chosen_w)"
fi

if on grl; then
  train grl --extractor $EXTRACTOR --set beta=1 --set dev_rerank_k=null
  evaluate grl "$OUT/test-grl.json"
  evaluate grl "$RUNS/grl/dev.json" --split dev
  cp "$RUNS/grl/dev.json" "$OUT/dev-grl.json"
  cp "$RUNS/grl/metrics.jsonl" "$OUT/metrics-grl.jsonl"
fi

if on seed; then
  train joint-s1 --extractor $EXTRACTOR --seed 1
  dev_eval joint-s1 "$RUNS/joint-s1/dev-w-chosen.json" --set global_weight="$(chosen_w)"
  .venv/bin/python experiments/ablation_table.py "$OUT/dev-seeds" \
    "JGCAR seeds on dev (w $(chosen_w), two-step K=$DEV_K)" \
    "seed=0=$RUNS/joint/dev-global_weight-$(chosen_w).json" "seed=1=$RUNS/joint-s1/dev-w-chosen.json"
fi

if on levers; then
  # Measured against the preset before 2026-12-02 (lambda2 = lambda3 = 1, w = 2 chosen for it): that
  # preset again, with one change each; lambda2 = lambda3 = 0.1 won here and is the preset since.
  BASE=(--set lambda2=1.0 --set lambda3=1.0) LEVER_W=2
  rows=()
  lever base "lambda2 = lambda3 = 1 (the preset before 2026-12-02)" $LEVER_W "${BASE[@]}"
  lever mh "J1 with the hardest negative after 1 warm-up epoch" $LEVER_W "${BASE[@]}" \
    --set j1_max_violation=true --set warmup_epochs=1
  lever l23 "lambda2 = lambda3 = 0.1 (weaker label triplets)" $LEVER_W "${BASE[@]}" --set lambda2=0.1 --set lambda3=0.1
  .venv/bin/python experiments/ablation_table.py "$OUT/dev-levers" \
    "JGCAR levers on dev (full budget, two-step K=$DEV_K, w $LEVER_W)" "${rows[@]}"
  # The best run on dev, if a lever's, is a chosen setting: its test once, two-step at K = 10, 20, 50.
  best=$(best_on_dev base="$OUT/dev-lever-base.json" mh="$OUT/dev-lever-mh.json" l23="$OUT/dev-lever-l23.json")
  echo "$best" > "$OUT/levers-chosen.txt"
  if [ "$best" != base ]; then
    evaluate "$best" "$OUT/test-levers-chosen.json" --set global_weight=$LEVER_W --two-step 10 20 50 --no-exhaustive
  fi
fi

if on txt1; then
  train joint-txt1 --extractor $EXTRACTOR --set init_from=$RUNS/joint --set text_tail_layers=1 \
    --set text_tail_lr_scale=1 --set epochs=3 --set lr=5e-5 --set lr_decay_epochs=[]
  # The fine-tuned text side changes the balance of the two scores, so w is chosen again on dev.
  dev_sweep joint-txt1 global_weight "$OUT/dev-txt1-global-weight" \
    "JGCAR txt1: re-rank weight of Omega on dev (two-step K=$DEV_K)" $WEIGHTS > "$OUT/txt1-chosen-global-weight.txt"
  TW=$(cat "$OUT/txt1-chosen-global-weight.txt")
  keep_lever joint-txt1 txt1 "$RUNS/joint-txt1/dev-global_weight-$TW.json"
  .venv/bin/python experiments/ablation_table.py "$OUT/dev-txt1" \
    "JGCAR: MiniLM's top layer fine-tuned from the main run (dev, two-step K=$DEV_K, each at its w chosen on dev)" \
    "the cpu preset (main run), w $(chosen_w)=$OUT/dev-chosen.json" \
    "+ 3 epochs at lr 5e-5, MiniLM's last layer trained, w $TW=$OUT/dev-lever-txt1.json"
  if [ "$(best_on_dev main="$OUT/dev-chosen.json" txt1="$OUT/dev-lever-txt1.json")" = txt1 ]; then
    evaluate joint-txt1 "$OUT/test-txt1.json" --set global_weight=$TW --two-step 10 20 50
  fi
fi

if on levers-cpu; then
  W="$(chosen_w)"
  rows=("the cpu preset (main run), w $W=$OUT/dev-chosen.json")
  MH=(--set j1_max_violation=true --set warmup_epochs=1) MH_LABEL="+ J1 with the hardest negative after 1 warm-up epoch"
  LONG=(--set epochs=9 --set "lr_decay_epochs=[6]") LONG_LABEL="+ 9 epochs, lr decay after 6"
  lever cpu-mh "$MH_LABEL" "$W" "${MH[@]}"
  lever cpu-long "$LONG_LABEL" "$W" "${LONG[@]}"
  .venv/bin/python experiments/ablation_table.py "$OUT/dev-levers-cpu" \
    "JGCAR levers on the cpu preset (dev, full budget, two-step K=$DEV_K, w $W)" "${rows[@]}"
  best=$(best_on_dev main="$OUT/dev-chosen.json" cpu-mh="$OUT/dev-lever-cpu-mh.json" cpu-long="$OUT/dev-lever-cpu-long.json")
  echo "$best" > "$OUT/levers-cpu-chosen.txt"
  if [ "$best" != main ]; then
    evaluate "$best" "$OUT/test-levers-cpu-chosen.json" --set global_weight="$W" --two-step 10 20 50
    case $best in
      cpu-mh) overrides=("${MH[@]}") label=$MH_LABEL ;;
      *) overrides=("${LONG[@]}") label=$LONG_LABEL ;;
    esac
    rows=()
    lever "$best-s1" "$label, seed 1" "$W" "${overrides[@]}" --seed 1
    .venv/bin/python experiments/ablation_table.py "$OUT/dev-levers-cpu-seeds" \
      "JGCAR: the chosen lever's seeds (dev, two-step K=$DEV_K, w $W; the preset's: dev-seeds.md)" \
      "$label, seed 0=$OUT/dev-lever-$best.json" "${rows[@]}"
  fi
fi

if on t2i-levers; then
  t2i_lever() {  # run name, table label, then overrides: trained, its own w chosen on dev, against the
    # main run's row; if better on dev, its test once and its seed 1 on dev
    local name=$1 label=$2; shift 2
    train "$name" --extractor $EXTRACTOR "$@"
    dev_sweep "$name" global_weight "$OUT/dev-$name-global-weight" \
      "JGCAR $label: re-rank weight of Omega on dev (two-step K=$DEV_K)" $WEIGHTS > "$OUT/$name-chosen-global-weight.txt"
    local w; w=$(cat "$OUT/$name-chosen-global-weight.txt")
    keep_lever "$name" "$name" "$RUNS/$name/dev-global_weight-$w.json"
    .venv/bin/python experiments/ablation_table.py "$OUT/dev-$name" \
      "JGCAR $label (dev, two-step K=$DEV_K, each at its w chosen on dev)" \
      "the cpu preset (main run), w $(chosen_w)=$OUT/dev-chosen.json" "$label, w $w=$OUT/dev-lever-$name.json"
    if [ "$(best_on_dev main="$OUT/dev-chosen.json" "$name=$OUT/dev-lever-$name.json")" = "$name" ]; then
      evaluate "$name" "$OUT/test-$name.json" --set global_weight="$w" --two-step 10 20 50 100 \
        --plot "$OUT/k_curve-$name.png"
      rows=()
      lever "$name-s1" "$label, seed 1" "$w" "$@" --seed 1
      .venv/bin/python experiments/ablation_table.py "$OUT/dev-$name-seeds" \
        "JGCAR $label: seeds (dev, two-step K=$DEV_K, w $w; the preset's: dev-seeds.md)" \
        "$label, seed 0, w $w=$OUT/dev-lever-$name.json" "${rows[@]}"
    fi
  }
  # VSE++'s text_pool=mean alone (a projection of the mean MiniLM state) reaches the baseline's dev
  # text->image R@1 (vsepp-flickr8k/dev-levers.md), where JGCAR's first stage trails it.
  t2i_lever wm "+ the mean word's projection in S^" --set global_word_mean=true
  # lambda2 = lambda3 = 1 -> 0.1 gained 4.8 dev rsum (dev-levers.md); JGCAR^v1 drops J2, J3.
  t2i_lever v1 "JGCAR^v1 (lambda2 = lambda3 = 0: no J2, J3)" --set lambda2=0 --set lambda3=0
  # wm weakens the first stage (its J1, the averaged hinge, stays near zero) while its re-rank gains:
  # J1 with the hardest negative (levers-cpu's mh) on top, to keep the global ranking signal alive.
  t2i_lever wm-mh "+ the mean word's projection in S^, J1 with the hardest negative after 1 warm-up epoch" \
    --set global_word_mean=true --set j1_max_violation=true --set warmup_epochs=1
fi

if on variants; then
  VAR=(--extractor $EXTRACTOR --set "train_images=${VAR_IMAGES:-2000}" --set "epochs=${VAR_EPOCHS:-1}"
       --set "lr_decay_epochs=[1]")
  W="$(chosen_w)"
  rows=()
  for seed in 0 1; do
    variant() {  # name, then overrides
      local name=$1-s$seed; shift
      train "$name" "${VAR[@]}" --seed $seed "$@"
      evaluate "$name" "$RUNS/$name/test-k$DEV_K.json" --two-step $DEV_K --no-exhaustive --set global_weight=$W
    }
    variant var-grl --set beta=1 --set dev_rerank_k=null
    # SGCAR: its own global part is untrained, so it validates exhaustively (200 dev images against
    # their 1,000 captions: 200k co-attentive pairs) and re-ranks GRL's list.
    variant var-coattention --set beta=0 --set dev_rerank_k=null --set dev_images=200
    evaluate var-coattention-s$seed "$RUNS/var-coattention-s$seed/test-sgcar-k$DEV_K.json" --two-step $DEV_K \
      --no-exhaustive --set global_weight=0 --first-stage "$RUNS/var-grl-s$seed"
    variant var-jgcar
    variant var-v1 --set lambda2=0 --set lambda3=0
    variant var-v2 --set lambda4=0
    rows+=("GRL seed $seed=$RUNS/var-grl-s$seed/test-k$DEV_K.json"
           "SGCAR seed $seed=$RUNS/var-coattention-s$seed/test-sgcar-k$DEV_K.json"
           "JGCAR seed $seed=$RUNS/var-jgcar-s$seed/test-k$DEV_K.json"
           "JGCAR^v1 seed $seed=$RUNS/var-v1-s$seed/test-k$DEV_K.json"
           "JGCAR^v2 seed $seed=$RUNS/var-v2-s$seed/test-k$DEV_K.json")
  done
  .venv/bin/python experiments/ablation_table.py "$OUT/variants" \
    "JGCAR variants (Flickr8k test, ${VAR_IMAGES:-2000} training images, ${VAR_EPOCHS:-1} epoch(s), two-step K=$DEV_K, w=$W)" \
    "${rows[@]}"
fi
.venv/bin/python -c "import json; from xmr.machine import machine_info; print(json.dumps(machine_info()))" > "$OUT/machine.json"
