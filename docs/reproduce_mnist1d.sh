#!/usr/bin/env bash
# Reproduces docs/results.md: three GRAFS searches on mnist1d (seeds 0, 1, 2), then the found
# activations and the five baselines trained from scratch over five seeds each.
set -euo pipefail
for s in 0 1 2; do
  grafs search --task mnist1d --seed "$s" --out "runs/mnist1d-seed$s" --quiet --plot
done
grafs evaluate --task mnist1d --results runs/mnist1d-seed0 runs/mnist1d-seed1 runs/mnist1d-seed2 \
  --seeds 5 --json docs/results_mnist1d.json --plot docs/mnist1d_activations.png
