#!/usr/bin/env bash
# The command-line route to a results table of docs/results.md: three GRAFS searches on mnist1d
# (seeds 0, 1, 2) with the task's defaults, then the found activations and the five baselines
# trained from scratch over five seeds each. Writes under runs/. At commit a5a0c17 (then
# docs/reproduce_mnist1d.sh) it made the table "Earlier: the paper's search settings"
# (now docs/data/mnist1d/paper.json); the newer tables come from scripts/study.py, which runs
# the same searches and evaluation.
set -euo pipefail
for s in 0 1 2; do
  grafs search --task mnist1d --seed "$s" --out "runs/mnist1d-seed$s" --quiet --plot
done
grafs evaluate --task mnist1d --results runs/mnist1d-seed0 runs/mnist1d-seed1 runs/mnist1d-seed2 \
  --seeds 5 --json runs/results_mnist1d.json --plot runs/mnist1d_activations.png
