#!/usr/bin/env bash
# VSE++ on Flickr8k: features -> train two settings (the cpu preset, whose GRU reads GloVe-initialised
# word embeddings, and cpu-bert, whose GRU reads frozen MiniLM token states) -> pick the checkpoint
# with the best dev rsum -> evaluate it once on test. Regenerates results/vsepp-flickr8k/.
# About 20 min per setting on 2 cores, plus 3 min of image features and 3 min of MiniLM states the
# first time. Re-running resumes an unfinished run and reuses a finished one.
set -euo pipefail
cd "$(dirname "$0")/.."
XMR=.venv/bin/xmr
RUNS=${RUNS:-runs/vsepp-f8k-sweep}
OUT=results/vsepp-flickr8k
mkdir -p "$OUT" "$RUNS"
$XMR features flickr8k

train() {  # name, preset, then any --set KEY=VALUE overrides
  local name=$1 preset=$2; shift 2
  $XMR train --model vsepp --preset "$preset" --data flickr8k --out "$RUNS/$name" --threads "${THREADS:-2}" \
    --quiet --resume "$@" >> "$RUNS/$name.log" 2>&1
}
train base cpu
train bert cpu-bert

.venv/bin/python - "$RUNS" "$OUT" <<'PY'
import json, sys
from pathlib import Path
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for meta in sorted(runs.glob("*/best.json")):
    m = json.loads(meta.read_text())
    rows.append({"setting": meta.parent.name, "best_epoch": m["epoch"] + 1, "dev_rsum": m["dev"]["rsum"],
                 "dev_i2t_r1": m["dev"]["i2t"]["r1"], "dev_t2i_r1": m["dev"]["t2i"]["r1"],
                 "overrides": json.loads((meta.parent / "config.json").read_text())["overrides"]})
rows.sort(key=lambda r: -r["dev_rsum"])
(out / "dev_sweep.json").write_text(json.dumps(rows, indent=1))
(out / "chosen.txt").write_text(rows[0]["setting"] + "\n")
for r in rows:
    print(f"{r['setting']:24s} dev rsum {r['dev_rsum']:6.1f}  (epoch {r['best_epoch']})")
PY
CHOSEN=$(cat "$OUT/chosen.txt")
$XMR eval "$RUNS/$CHOSEN" --split test --json "$OUT/test.json"
cp "$RUNS/$CHOSEN/metrics.jsonl" "$RUNS/$CHOSEN/curve.png" "$RUNS/$CHOSEN/config.json" "$OUT/"
.venv/bin/python -c "import json; from xmr.machine import machine_info; print(json.dumps(machine_info()))" > "$OUT/machine.json"
