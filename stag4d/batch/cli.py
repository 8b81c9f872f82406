"""``python scripts/batch.py`` / ``stag4d-batch``: the whole pipeline for many clips, on Ray.

    python scripts/batch.py CLIPS --out runs/NAME [key=value ...] [--config configs/stag4d.yaml]
        [--stages prepare_video,gen_mv,train,visualize,evaluate]
        [--prepare-video-args "--frames 32 --matting color"] [--gen-mv-args "--model DIR"]
        [--train-args "..."] [--visualize-args "frames=60"] [--evaluate-args "views=eval"]
        [--address HOST:PORT] [--num-cpus N] [--num-gpus N] [--cpus-per-task 1] [--gpus-per-task 1]
        [--gpu-stages gen_mv,train] [--retries 2]

CLIPS is a folder of clips (videos, folders of images, dataset folders with ref/) or a list file
(one path per line). ``key=value`` items are run-config overrides of train, visualize and
evaluate; ``--<stage>-args`` are that stage's own arguments (for train / visualize / evaluate:
``key=value`` items and optionally ``--config FILE``). Writes under ``--out``: ``datasets/<clip>``
(prepared clips), ``logs/<clip>/<step>`` (runs), ``valid/<clip>`` (videos, metrics),
``clips/<clip>/`` (each stage's log and the stage record) and ``results.csv`` / ``results.md``.
A rerun with the same arguments skips what is complete and continues the rest.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Optional, Sequence

from stag4d.batch.clips import find_clips
from stag4d.batch.results import TABLE_MARKDOWN
from stag4d.batch.runner import RayOptions, run_batch
from stag4d.batch.stages import DEFAULT_GPU_STAGES, STAGES, BatchSettings, parse_stages
from stag4d.errors import UserError, exit_on_user_error


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run prepare_video -> gen_mv -> train -> visualize -> evaluate for many clips as Ray tasks, "
                    "resumably, with a results table.",
        epilog="example: python scripts/batch.py clips/ --out runs/bench --config configs/anchored.yaml "
               "--stages train,visualize,evaluate total_steps=3000",
    )
    parser.add_argument("clips", help="folder of clips (videos, image folders, dataset folders) or a list file")
    parser.add_argument("--out", required=True, help="output folder (shared by every node of a cluster)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="run-config overrides for train, visualize and evaluate")
    parser.add_argument("--config", default="configs/stag4d.yaml",
                        help="run config of train, visualize and evaluate (default: %(default)s)")
    parser.add_argument("--stages", default=",".join(STAGES), help="stages to run (default: all: %(default)s)")
    for stage in STAGES:
        parser.add_argument(f"--{stage.replace('_', '-')}-args", default="", metavar="ARGS",
                            help=f"{stage}'s own arguments, one quoted string")
    ray_group = parser.add_argument_group("Ray")
    ray_group.add_argument("--address", default=None,
                           help="join a running cluster (`ray start --head` prints it; 'auto' finds a local one); "
                                "default: start Ray here for this batch")
    ray_group.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local instance (default: all)")
    ray_group.add_argument("--num-gpus", type=int, default=None, help="GPUs of the local instance (default: all)")
    ray_group.add_argument("--cpus-per-task", type=float, default=1.0,
                           help="CPUs per stage task; also its torch threads (default: %(default)s)")
    ray_group.add_argument("--gpus-per-task", type=float, default=1.0,
                           help="GPUs per GPU-stage task when the cluster has GPUs; 0.5 runs two on one GPU "
                                "(default: %(default)s)")
    ray_group.add_argument("--gpu-stages", default=",".join(DEFAULT_GPU_STAGES),
                           help="stages that get GPUs (default: %(default)s); the others run on CPUs")
    ray_group.add_argument("--retries", type=int, default=2,
                           help="Ray retries of a task whose worker or stage process died (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per stage only)")
    return parser.parse_intermixed_args(argv)  # key=value items may come after the options


def settings_from_args(args: argparse.Namespace) -> BatchSettings:
    """The batch settings of the command line (paths made absolute; one-line errors)."""
    if args.cpus_per_task <= 0 or args.gpus_per_task <= 0:
        raise UserError("--cpus-per-task and --gpus-per-task must be positive")
    if args.retries < 0:
        raise UserError(f"--retries {args.retries}: give 0 or more")
    bad = [item for item in args.overrides if "=" not in item]
    if bad:
        raise UserError(f"'{bad[0]}' is not key=value: run-config overrides look like total_steps=500")
    stage_args = {}
    for stage in STAGES:
        text = getattr(args, f"{stage}_args")
        try:
            stage_args[stage] = shlex.split(text)
        except ValueError as err:
            raise UserError(f"--{stage.replace('_', '-')}-args {text!r}: {err}") from None
    config = os.path.abspath(args.config)
    if not os.path.isfile(config):
        raise UserError(f"--config {args.config} not found: give a YAML file such as configs/stag4d.yaml")
    return BatchSettings(out=os.path.abspath(args.out), stages=parse_stages(args.stages), config=config,
                         overrides=list(args.overrides), stage_args=stage_args,
                         gpu_stages=tuple(parse_stages(args.gpu_stages)) if args.gpu_stages.strip() else (),
                         cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task)


@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = settings_from_args(args)
    clips, ignored = find_clips(args.clips, exclude=(settings.out,))
    if ignored:
        print(f"note: {len(ignored)} entries of {args.clips} are not clips and are left out: "
              f"{', '.join(ignored[:5])}{' ...' if len(ignored) > 5 else ''}", file=sys.stderr)
    options = RayOptions(args.address, args.num_cpus, args.num_gpus, args.retries)
    try:
        table = run_batch(clips, settings, options, progress=not args.no_progress)
    except KeyboardInterrupt:  # the running stages were cancelled; what finished is kept
        print(f"interrupted: the same command continues the batch (table: {settings.out}/{TABLE_MARKDOWN})",
              file=sys.stderr)
        sys.exit(130)
    with open(os.path.join(settings.out, TABLE_MARKDOWN)) as f:
        print(f.read(), end="")
    failed = [row["clip"] for row in table if row["status"] == "failed"]
    if failed:
        print(f"{len(failed)} of {len(clips)} clips failed: {', '.join(failed)} (the error column says why; "
              f"logs in {os.path.join(settings.out, 'clips')}/<clip>/)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
