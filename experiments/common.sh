# Shared helpers of the experiment scripts (sourced). Set MODEL, PRESET and RUNS first.
# DATA (default flickr8k) and THREADS (default 2) may come from the environment, e.g. for a quick
# check of a script on synthetic data: DATA=synthetic,seed=3,n_train=300 THREADS=1.
XMR=.venv/bin/xmr

train() {  # run name, then any --set KEY=VALUE overrides; resumes an unfinished run, reuses a finished one
  local name=$1; shift
  $XMR train --model "$MODEL" --preset "$PRESET" --data "${DATA:-flickr8k}" --out "$RUNS/$name" \
    --threads "${THREADS:-2}" --quiet --resume "$@" >> "$RUNS/$name.log" 2>&1
}

evaluate() {  # run name, result json, then xmr eval options; skipped when the json is newer than
  # the run's best checkpoint (a committed result of an earlier training does not block a new one)
  local name=$1 json=$2; shift 2
  [ "$json" -nt "$RUNS/$name/best.json" ] || $XMR eval "$RUNS/$name" --split test --json "$json" --threads "${THREADS:-2}" "$@" \
    >> "$RUNS/$name.log" 2>&1
}

dev_eval() {  # run name, dev json, then xmr eval options: two-step at $DEV_K on the whole dev split
  local name=$1 json=$2; shift 2
  evaluate "$name" "$json" --split dev --two-step "$DEV_K" --no-exhaustive "$@"  # the later --split wins
}

best_setting() {  # ablation table json -> the value after "=" of its best-rsum row
  .venv/bin/python -c "import json,sys; rows=json.load(open(sys.argv[1])); print(max(rows, key=lambda r: r['rsum'])['setting'].split('=')[1])" "$1"
}

dev_sweep() {  # run name, scoring key, table prefix, title, then values: the trained run scored on dev
  # with --set key=value for each value (dev_eval), the table, and the best value on stdout
  local name=$1 key=$2 prefix=$3 title=$4; shift 4
  local rows=() v
  for v in "$@"; do
    dev_eval "$name" "$RUNS/$name/dev-$key-$v.json" --set "$key=$v"
    rows+=("$key=$v=$RUNS/$name/dev-$key-$v.json")
  done
  .venv/bin/python experiments/ablation_table.py "$prefix" "$title" "${rows[@]}" >/dev/null
  best_setting "$prefix.json"
}
