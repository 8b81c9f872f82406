#!/bin/bash
# Held-out frames vs trained frames for a few time settings (issue 22), one main.py + evaluate.py
# (views=reference) per row; the results are the " trained" / " held-out" / "temporal smoothness"
# lines of $OUT/<name>.eval.log.
#   benchmarks/ablate_time.sh [OUT] [CONFIG] [DATA] [HOLDOUT] [extra overrides for every run ...]
# ONLY="name ..." (environment) runs just those rows.
# Defaults: the fast demo variant on the CPU (the data is made first if missing). The short CPU runs
# vary by up to 4 dB with the seed: compare rows at the same seed (pass seed=N as an extra override).
set -u
OUT=${1:-/tmp/ablate_time}; CONFIG=${2:-configs/demo.yaml}; DATA=${3:-$OUT/demo_fast}; HOLDOUT=${4:-[3,8,13]}
shift $(( $# < 4 ? $# : 4 ))
mkdir -p "$OUT"
export OMP_WAIT_POLICY=PASSIVE
# MOTION: the demo's motion when DATA is made here (the slower variant: MOTION="--cycles 1 --amplitude 1.6 --wobble 0.8")
MOTION=${MOTION:-"--cycles 2.5 --amplitude 1.6 --wobble 0.8"}
# shellcheck disable=SC2086  # MOTION is a list of arguments
[ -d "$DATA/ref" ] || python scripts/make_demo.py --out "$DATA" $MOTION > "$OUT/make.log" 2>&1
run() {
  name=$1; shift
  [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]] || return 0
  start=$(date +%s.%N)
  python main.py --config "$CONFIG" path="$DATA" save_path="abl_$name" outdir="$OUT/logs" valid_dir="$OUT/valid" \
    valid_interval=0 holdout_frames="$HOLDOUT" overwrite=true "$@" > "$OUT/$name.train.log" 2>&1
  end=$(date +%s.%N)
  python scripts/evaluate.py --config "$CONFIG" path="$DATA" save_path="abl_$name" outdir="$OUT/logs" \
    valid_dir="$OUT/valid" views=reference > "$OUT/$name.eval.log" 2>&1
  echo "$name $(echo "$end - $start" | bc) s: $(grep -E ' trained| held-out|smoothness' "$OUT/$name.eval.log" | tr -s ' ' | tr '\n' ';')"
}
# Every row spells out its time_jitter keys, so that it means the same whatever the config's defaults.
NONE="time_jitter=0"
FRAME="time_jitter_target=frame time_jitter_reference=true"          # the frame's own images, every view
INTERP="time_jitter=1 time_jitter_target=interpolated"               # blended between the trained frames
run baseline $NONE "$@"
run released_time $NONE time_mapping=released "$@"
run time8 $NONE "kplanes_resolution=[32,32,32,8]" "$@"
run time32 $NONE "kplanes_resolution=[32,32,32,32]" "$@"
run smooth50 $NONE time_smoothness_weight=50 "$@"
run jitter time_jitter=0.5 $FRAME "$@"
run motion1k $NONE lambda_motion_smooth=1000 "$@"
run jitter_motion time_jitter=0.5 $FRAME lambda_motion_smooth=1000 "$@"
run jitter_linear time_jitter=0.5 $FRAME time_jitter_decay=linear "$@"
run interp $INTERP time_jitter_reference=true "$@"
run interp05 time_jitter=0.5 time_jitter_target=interpolated time_jitter_reference=true "$@"
run interp_linear $INTERP time_jitter_reference=true time_jitter_decay=linear "$@"
run interp_late $INTERP time_jitter_reference=true "time_jitter_window=[0.5,1]" "$@"
run anchor_jitter_frame time_jitter=0.5 time_jitter_target=frame time_jitter_reference=false "$@"
run anchor_jitter $INTERP time_jitter_reference=false "$@"
run anchor_jitter_motion $INTERP time_jitter_reference=false lambda_motion_smooth=1000 "$@"
run ref_share10 $INTERP time_jitter_reference=true time_jitter_reference_fraction=0.1 "$@"
run ref_share25 $INTERP time_jitter_reference=true time_jitter_reference_fraction=0.25 "$@"
run ref_share50 $INTERP time_jitter_reference=true time_jitter_reference_fraction=0.5 "$@"
