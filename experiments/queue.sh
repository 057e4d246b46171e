#!/usr/bin/env bash
# The order the 2-core machine ran the experiments in (one heavy job at a time); each step resumes
# or reuses finished work, so re-running the queue continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash experiments/mmca_flickr8k.sh main
.venv/bin/python benchmarks/search_index.py
.venv/bin/python benchmarks/model_throughput.py --models vsepp:cpu-bert mmca:cpu jgcar:cpu
bash experiments/jgcar_flickr8k.sh main
bash experiments/mmca_flickr8k.sh alpha
bash experiments/mmca_flickr8k.sh d
bash experiments/jgcar_flickr8k.sh variants
.venv/bin/python benchmarks/eval_protocol.py
.venv/bin/python benchmarks/serve_load.py runs/f8k-test-index
