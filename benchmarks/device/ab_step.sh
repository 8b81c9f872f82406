#!/bin/bash
# The training step of two checkouts alternated in separate processes (a change that is not a
# setting cannot be a --variant of one process): BASE (e.g. a `git worktree add .base HEAD~3`,
# carried) against this checkout, ROUNDS times, then the medians of each side.
#   benchmarks/device/ab_step.sh BASE ROUNDS [bench_train_step.py arguments...]
# Each process builds the guidance (compiled from inductor's cache after the first) and times its
# steps after warm-up as bench_train_step.py does; the per-process line is its [config] row.
set -uo pipefail
BASE=$1; ROUNDS=$2; shift 2
HERE=$PWD
for round in $(seq "$ROUNDS"); do
  for side in base new; do
    dir=$HERE; [ $side = base ] && dir=$BASE
    line=$(cd "$dir" && PYTHONPATH=$dir:${PYTHONPATH:-} python3 benchmarks/bench_train_step.py "$@" 2>&1 \
      | grep -E "^\[config\] (step ms|failed)")
    echo "round $round $side: ${line:-no result}"
  done
done
