#!/bin/bash
# The training step of several checkouts alternated in separate processes (a change that is not a
# setting cannot be a --variant of one process), ROUNDS times, each round in the order given.
#   benchmarks/device/ab_step.sh ROUNDS CHECKOUT... [-- bench_train_step.py arguments...]
# `.` is this checkout; another one is a copy of a commit made here and carried (`.ab/` is ignored):
#   git archive --prefix=.ab/base/ REV | tar -x && git rev-parse --short REV > .ab/base/.revision
# Each process builds the guidance (compiled from inductor's cache after the first) and times its
# steps after warm-up as bench_train_step.py does; the line printed per process is its [config]
# row; at the end, each checkout's medians and their mean. Give --path absolute: each process runs
# in its checkout.
set -uo pipefail
ROUNDS=$1; shift
CHECKOUTS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do CHECKOUTS+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#CHECKOUTS[@]} -ge 1 ] || { echo "usage: ab_step.sh ROUNDS CHECKOUT... [-- bench_train_step.py arguments]"; exit 2; }
HERE=$PWD
declare -A MEDIANS
for round in $(seq "$ROUNDS"); do
  for checkout in "${CHECKOUTS[@]}"; do
    dir=$(cd "$HERE" && cd "$checkout" && pwd)
    line=$(cd "$dir" && PYTHONPATH=$dir:${PYTHONPATH:-} python3 benchmarks/bench_train_step.py "$@" 2>&1 \
      | grep -E "^\[config\] (step ms|failed)")
    rev=$(cat "$dir/.revision" 2>/dev/null || git -C "$dir" rev-parse --short HEAD 2>/dev/null)
    echo "round $round $checkout (${rev:-?}): ${line:-no result}"
    median=$(sed -n 's/.*step ms median \([0-9.]*\).*/\1/p' <<< "$line")
    [ -n "$median" ] && MEDIANS[$checkout]="${MEDIANS[$checkout]:-} $median"
  done
done
# each checkout's medians, round by round, and their mean
for checkout in "${CHECKOUTS[@]}"; do
  values=${MEDIANS[$checkout]:-}
  mean=$(python3 -c "import sys; v = [float(x) for x in sys.argv[1:]]; print(f'{sum(v) / len(v):.1f}' if v else '-')" $values)
  echo "$checkout: medians${values:- none} ms, mean $mean ms"
done
