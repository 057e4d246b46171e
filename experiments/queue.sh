#!/usr/bin/env bash
# The order the 2-core machine ran the MMCA and JGCAR experiments in (one heavy job at a time).
set -euo pipefail
cd "$(dirname "$0")/.."
bash experiments/mmca_flickr8k.sh main
bash experiments/mmca_flickr8k.sh alpha
bash experiments/jgcar_flickr8k.sh main
bash experiments/mmca_flickr8k.sh d
bash experiments/jgcar_flickr8k.sh variants
.venv/bin/python benchmarks/model_throughput.py --models vsepp:cpu-bert mmca:cpu jgcar:cpu
.venv/bin/python benchmarks/search_index.py
