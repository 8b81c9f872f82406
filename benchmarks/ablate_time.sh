#!/bin/bash
# Held-out frames vs trained frames for a few time settings (issue 22), one main.py + evaluate.py
# (views=reference) per row; the results are the " trained" / " held-out" / "temporal smoothness"
# lines of $OUT/<name>.eval.log.
#   benchmarks/ablate_time.sh [OUT] [CONFIG] [DATA] [HOLDOUT] [extra overrides for every run ...]
# Defaults: the fast demo variant on the CPU (the data is made first if missing).
set -u
OUT=${1:-/tmp/ablate_time}; CONFIG=${2:-configs/demo.yaml}; DATA=${3:-$OUT/demo_fast}; HOLDOUT=${4:-[3,8,13]}
shift $(( $# < 4 ? $# : 4 ))
mkdir -p "$OUT"
export OMP_WAIT_POLICY=PASSIVE
[ -d "$DATA/ref" ] || python scripts/make_demo.py --out "$DATA" --cycles 2.5 --amplitude 1.6 --wobble 0.8 \
  > "$OUT/make.log" 2>&1
run() {
  name=$1; shift
  start=$(date +%s.%N)
  python main.py --config "$CONFIG" path="$DATA" save_path="abl_$name" outdir="$OUT/logs" valid_dir="$OUT/valid" \
    valid_interval=0 holdout_frames="$HOLDOUT" overwrite=true "$@" > "$OUT/$name.train.log" 2>&1
  end=$(date +%s.%N)
  python scripts/evaluate.py --config "$CONFIG" path="$DATA" save_path="abl_$name" outdir="$OUT/logs" \
    valid_dir="$OUT/valid" views=reference > "$OUT/$name.eval.log" 2>&1
  echo "$name $(echo "$end - $start" | bc) s: $(grep -E ' trained| held-out|smoothness' "$OUT/$name.eval.log" | tr -s ' ' | tr '\n' ';')"
}
run baseline "$@"
run released_time time_mapping=released "$@"
run time8 "kplanes_resolution=[32,32,32,8]" "$@"
run time32 "kplanes_resolution=[32,32,32,32]" "$@"
run smooth50 time_smoothness_weight=50 "$@"
run jitter time_jitter=0.5 "$@"
run motion1k lambda_motion_smooth=1000 "$@"
run jitter_motion time_jitter=0.5 lambda_motion_smooth=1000 "$@"
