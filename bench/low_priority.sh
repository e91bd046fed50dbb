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
# Without autogroups (no /proc/self/autogroup, or it reads empty in a container whose cgroup shares the CPU
# instead) nice alone is enough, and the write fails harmlessly.
exec setsid --wait bash -c '{ echo 19 > /proc/self/autogroup; } 2>/dev/null; exec nice -n 19 "$@"' \
  low_priority "$@"
