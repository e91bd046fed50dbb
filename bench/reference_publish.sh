#!/usr/bin/env bash
# Copies the reference run's finished (project, seed) runs (docs/results.md) from its worktree (.wt/reference, or
# REFERENCE_TREE as in bench/reference_run.sh) into this work tree, to be committed: metrics/s<seed>/<project>.json
# and plots/s<seed>/<project>/.
# A run's metrics file is the last thing its train stage publishes, so a run without one (training, or
# interrupted) is left out, and nothing half-made is copied; one whose metrics are already here (the worktree's
# checkout holds the committed ones) too. Prints the runs it copied.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
tree="$root/${REFERENCE_TREE:-.wt/reference}"
shopt -s nullglob
for metrics in "$tree"/metrics/s*/*.json; do
  seed=$(basename "$(dirname "$metrics")")
  project=$(basename "$metrics" .json)
  if cmp -s "$metrics" "$root/metrics/$seed/$project.json"; then continue; fi
  [ -d "$tree/plots/$seed/$project" ] || { echo "no plots/$seed/$project beside its metrics in $tree" >&2; exit 1; }
  mkdir -p "$root/plots/$seed/$project" "$root/metrics/$seed"
  cp "$tree/plots/$seed/$project"/* "$root/plots/$seed/$project/"
  cp "$metrics" "$root/metrics/$seed/$project.json"
  echo "$project seed ${seed#s}"
done
