#!/usr/bin/env bash
# The reference table's long run (docs/results.md): `dvc repro` of the committed params.yaml on a
# CIFAR-10 copy, in a worktree of this repository pinned at one commit (.wt/reference, git-ignored) with its own
# virtual environment, at low priority (bench/low_priority.sh), its log in .wt/reference/logs/reference.log. Run it
# again after a kill, a reboot or a new session: it makes what is missing and continues (the pipeline resumes every
# interrupted run).
#
#   bash bench/reference_run.sh /path/to/cifar-10-python.tar.gz <md5> "JPEG copy" [commit [stage ...]]
#
# The commit defaults to the worktree's own (or HEAD when there is none yet; "" keeps that default). Moving it to
# a later commit keeps every finished and interrupted run as long as src/cnnlab/core and the composed settings are
# unchanged. Stages (e.g. train@p08-43 train@p09-43) make only those and what they depend on, in that order: a machine
# that does not keep .wt/ between sessions trains the table a session-sized part at a time. REFERENCE_TREE (relative
# to the repository, default .wt/reference) names another worktree, for a run pinned at another commit beside it.
set -euo pipefail
archive=${1:?the CIFAR-10 archive}; md5=${2:?its md5}; label=${3:-}; commit=${4:-}
stages=("${@:5}")
archive=$(realpath -e "$archive")  # before the cd below: a relative path names a file here
root=$(git rev-parse --show-toplevel)
tree="$root/${REFERENCE_TREE:-.wt/reference}"
low_priority="$root/bench/low_priority.sh"  # nice alone yields nothing to other sessions (see there)
if [ ! -d "$tree" ]; then
  git -C "$root" worktree add --detach "$tree" "${commit:-HEAD}"
elif [ -n "$commit" ]; then
  git -C "$tree" checkout --detach "$commit"
fi
cd "$tree"
if [ ! -x .venv/bin/dvc ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e .
fi
mkdir -p conf/local logs
cat > conf/local/default.yaml <<EOF
# @package _global_
mirror:
  source: $archive
  md5: $md5
  label: ${label:-null}
EOF
echo "=== $(date -u +%FT%TZ) start at $(git rev-parse --short HEAD)" >> logs/reference.log
(
  export PATH="$tree/.venv/bin:$PATH" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1
  rc=0
  if ((${#stages[@]})); then
    for stage in "${stages[@]}"; do
      bash "$low_priority" dvc repro "$stage" >> logs/reference.log 2>&1 || { rc=$?; break; }
    done
  else
    bash "$low_priority" dvc repro >> logs/reference.log 2>&1 || rc=$?
  fi
  echo "=== $(date -u +%FT%TZ) dvc repro ${stages[*]} exited $rc" >> logs/reference.log
) < /dev/null > /dev/null 2>&1 &
disown
echo "training in the background: tail -f $tree/logs/reference.log"
