#!/usr/bin/env bash
# Runs a command at the lowest CPU priority that holds on Linux: `nice -n 19` alone does not. With autogroups
# (/proc/sys/kernel/sched_autogroup_enabled = 1, the default of most distributions) the scheduler first shares the
# CPU equally between sessions and applies nice only inside one, so a niced training started in its own session
# (setsid, nohup, a terminal multiplexer) takes as much CPU as the user's whole shell (measured: bench/README.md,
# "A background run's priority"). This starts the command in a new session and nices that session's autogroup to
# 19 as well.
#
#   bash bench/low_priority.sh dvc repro train@p11-44
set -euo pipefail
(($#)) || { echo "usage: bash bench/low_priority.sh COMMAND [ARG ...]" >&2; exit 2; }
# A kernel without autogroups has no /proc/self/autogroup: there, nice alone is enough.
exec setsid --wait bash -c '[ -w /proc/self/autogroup ] && echo 19 > /proc/self/autogroup; exec nice -n 19 "$@"' \
  low_priority "$@"
