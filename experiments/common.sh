# Shared helpers of the experiment scripts (sourced). Set MODEL, PRESET and RUNS first.
# DATA (default flickr8k) and THREADS (default 2) may come from the environment, e.g. for a quick
# check of a script on synthetic data: DATA=synthetic,seed=3,n_train=300 THREADS=1.
XMR=.venv/bin/xmr

train() {  # run name, then any --set KEY=VALUE overrides; resumes an unfinished run, reuses a finished one
  local name=$1; shift
  $XMR train --model "$MODEL" --preset "$PRESET" --data "${DATA:-flickr8k}" --out "$RUNS/$name" \
    --threads "${THREADS:-2}" --quiet --resume "$@" >> "$RUNS/$name.log" 2>&1
}

evaluate() {  # run name, result json, then xmr eval options; skipped when the json exists
  local name=$1 json=$2; shift 2
  [ -f "$json" ] || $XMR eval "$RUNS/$name" --split test --json "$json" --threads "${THREADS:-2}" "$@" \
    >> "$RUNS/$name.log" 2>&1
}
