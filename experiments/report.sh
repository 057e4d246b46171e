#!/usr/bin/env bash
# The comparison report (results/report.md): runs every model's Flickr8k experiment script (each
# reuses finished runs and resumes unfinished ones, so a second call only rebuilds the report),
# then collects the committed result files into one table, the papers' claims and the figures.
#   bash experiments/report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash experiments/vsepp_flickr8k.sh
bash experiments/mmca_flickr8k.sh
bash experiments/jgcar_flickr8k.sh
bash experiments/acmm_flickr8k.sh
bash experiments/revisiting_flickr8k.sh
bash experiments/cmmn.sh
.venv/bin/python experiments/report.py
