#!/usr/bin/env bash
# Copies the reference run's finished projects (docs/results.md) from its worktree (.wt/reference)
# into this work tree, to be committed with their rows in docs/results.md: metrics/<project>.json and plots/<project>/.
# A project's metrics file is the last thing its train stage publishes, so a project without one (training, or
# interrupted) is left out, and nothing half-made is copied; one whose metrics are already here (the worktree's
# checkout holds the committed ones) too. Prints the projects it copied.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
tree="$root/.wt/reference"
shopt -s nullglob
for metrics in "$tree"/metrics/*.json; do
  project=$(basename "$metrics" .json)
  if cmp -s "$metrics" "$root/metrics/$project.json"; then continue; fi
  [ -d "$tree/plots/$project" ] || { echo "no plots/$project beside its metrics in $tree" >&2; exit 1; }
  mkdir -p "$root/plots/$project"
  cp "$tree/plots/$project"/* "$root/plots/$project/"
  cp "$metrics" "$root/metrics/$project.json"
  echo "$project"
done
