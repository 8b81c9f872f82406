"""Video to 4D object in one command: ``prepare_video``, ``gen_mv`` and ``main.py`` side by side.

    python scripts/video_to_4d.py INPUT --name NAME [--out-root dataset] [--config configs/stag4d.yaml]
        [--prepare-args "..."] [--gen-mv-args "..."] [--sequential] [key=value ...]

The three stages start together; each loads what it can before its input exists, then waits for it:

1. ``scripts/prepare_video.py INPUT --name NAME --out-root ROOT``: the frames, ``ROOT/NAME/ref/``.
   Once it has succeeded, this command writes ``ROOT/NAME/prepare_video.json`` (its input and wall
   time) atomically.
2. ``scripts/gen_mv.py --path ROOT/NAME --json ROOT/NAME/gen_mv.json --wait-for ROOT/NAME/prepare_video.json``:
   loads Zero123++ (imports and weights: about 15 s on an H200), waits for prepare_video's
   record, then makes the six views of every frame and writes its own record once every view
   is on disk. Its output goes to ``ROOT/NAME/gen_mv.log``.
3. ``main.py --config CONFIG path=ROOT/NAME save_path=NAME wait_for=ROOT/NAME/gen_mv.json key=value ...``:
   loads and compiles the Zero123 guidance (about 40 s on an H200), waits for gen_mv's record,
   and trains.

The records of an earlier run (and its gen_mv log) are set aside first and put back if
prepare_video fails, deleted once it succeeds. ``--sequential`` runs the stages one after the
other instead (one GPU too small for both models: gen_mv at batch 8 takes about 15 GiB, main.py
about 5 GiB).

gen_mv and main.py read the same files and compute what they compute when started one after the
other (main.py's guidance warm-up draws no random numbers); only the wall time changes. When a
stage fails, the stages still waiting are stopped (SIGTERM ends main.py's start-up in one line)
and the command ends with the failure's last line; a failed prepare_video also takes gen_mv's
log and, when this command made it, the empty dataset folder with it. The wall time of each
stage and the total are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Optional, Sequence

from stag4d.errors import TrainingStopped, UserError, exit_on_user_error, file_tail, last_error_message
from stag4d.files import write_text

# the stages as modules (the scripts' own code), so that this works from any folder
PREPARE_VIDEO, GEN_MV, TRAIN = "stag4d.data.prepare_video", "stag4d.multiview.gen_mv", "stag4d.training.cli"
RECORD = "gen_mv.json"  # gen_mv's --json record in the dataset folder: main.py's signal to read the data
# written here once prepare_video has written the frames (its input and wall time): gen_mv's signal to read them
PREPARED = "prepare_video.json"
GEN_MV_LOG = "gen_mv.log"
SET_ASIDE = ".earlier"  # suffix of an earlier run's records while this run's prepare_video works


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="a video (MP4, GIF, WebM) or a folder of frames")
    parser.add_argument("--name", required=True, help="dataset and run name")
    parser.add_argument("--out-root", default="dataset", help="where the dataset folder goes (default: %(default)s)")
    parser.add_argument("--config", default="configs/stag4d.yaml", help="main.py's config (default: %(default)s)")
    parser.add_argument("--prepare-args", default="", help='more prepare_video arguments, e.g. "--matting color"')
    parser.add_argument("--gen-mv-args", default="", help='more gen_mv arguments, e.g. "--model DIR"')
    parser.add_argument("--sequential", action="store_true", help="run the stages one after the other, not side by side")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="main.py settings")
    return parser.parse_intermixed_args(argv)


def module(name: str) -> list[str]:
    return [sys.executable, "-m", name]


class StageFailed(UserError):
    """A stage ended with an error it has already printed."""

    def __init__(self, name: str, code: int, detail: str = ""):
        super().__init__(f"{name} failed (exit status {code}){': ' + detail if detail else ', see above'}")
        self.exit_code = code


def run_stage(name: str, command: list[str], walls: dict[str, float]) -> None:
    """Run a stage in the foreground (its output on this terminal); a failure ends the command."""
    start = time.perf_counter()
    code = subprocess.call(command)
    walls[name] = time.perf_counter() - start
    if code != 0:
        raise StageFailed(name, code)
    print(f"{name}: {walls[name]:.1f} s", flush=True)


def stop(process: subprocess.Popen, seconds: float = 60.0) -> None:
    """SIGTERM (a main.py still starting up ends in one line), then SIGKILL if it does not end within
    ``seconds``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    dataset = os.path.join(args.out_root, args.name)
    record, log = os.path.join(dataset, RECORD), os.path.join(dataset, GEN_MV_LOG)
    prepared = os.path.join(dataset, PREPARED)
    gen_mv_args = shlex.split(args.gen_mv_args)
    for option, value in (("--path", dataset), ("--json", record), ("--wait-for", prepared)):
        if any(a == option or a.startswith(option + "=") for a in gen_mv_args):
            raise UserError(f"--gen-mv-args: leave out {option}; video_to_4d sets it ({value})")
    walls: dict[str, float] = {}
    begin = time.perf_counter()
    prepare = (module(PREPARE_VIDEO) + [args.input, "--name", args.name, "--out-root", args.out_root]
               + shlex.split(args.prepare_args))
    gen_mv = module(GEN_MV) + ["--path", dataset, "--json", record] + gen_mv_args
    train = module(TRAIN) + ["--config", args.config, f"path={dataset}", f"save_path={args.name}",
                             f"wait_for={record}"] + list(args.overrides)

    created = False
    # an earlier run's records: the waiting stages must wait for this run's. Side by side they are
    # set aside (with its gen_mv log) until prepare_video succeeds, so that a prepare_video that
    # refuses (frames there, no --overwrite) leaves the dataset as it was
    earlier = [path for path in (record, prepared) if os.path.exists(path)]
    if args.sequential:
        run_stage("prepare_video", prepare, walls)
        for path in earlier:
            os.remove(path)
        earlier = []
    else:  # gen_mv's log goes into the dataset folder from the start
        created = not os.path.isdir(dataset)
        os.makedirs(dataset, exist_ok=True)
        gen_mv += ["--wait-for", prepared]
        earlier += [log] if os.path.exists(log) else []
        for path in earlier:
            os.replace(path, path + SET_ASIDE)

    start = time.perf_counter()
    generator = trainer = None
    try:
        with open(log, "w") as log_file:
            generator = subprocess.Popen(gen_mv, stdout=log_file, stderr=subprocess.STDOUT)
        if not args.sequential:
            trainer = subprocess.Popen(train)
            try:
                run_stage("prepare_video", prepare, walls)
            except StageFailed:
                for process in (generator, trainer):
                    stop(process)
                os.remove(log)  # it holds only gen_mv's start: nothing of this dataset
                for path in earlier:
                    os.replace(path + SET_ASIDE, path)
                if created and not os.listdir(dataset):
                    os.rmdir(dataset)
                raise
            for path in (record, prepared, log):  # this run's frames replaced theirs (and an interrupted run's)
                if os.path.exists(path + SET_ASIDE):
                    os.remove(path + SET_ASIDE)
            write_text(prepared, json.dumps(dict(input=args.input, prepare_args=args.prepare_args,
                                                 wall_s=round(walls["prepare_video"], 2)), indent=2) + "\n")
        code = generator.wait()
        walls["gen_mv"] = time.perf_counter() - start
        if code != 0:
            if trainer is not None:
                stop(trainer)
            raise StageFailed("gen_mv", code, f"{last_error_message(file_tail(log))} (whole output: {log})")
        where = "" if args.sequential else "from its start, beside prepare_video and main.py; "
        print(f"gen_mv: {walls['gen_mv']:.1f} s ({where}output: {log})", flush=True)
        if trainer is None:
            start = time.perf_counter()
            trainer = subprocess.Popen(train)
        code = trainer.wait()
        walls["main.py"] = time.perf_counter() - start
    except KeyboardInterrupt:  # Ctrl-C reached the children too (a training main.py saves): let them finish
        for process in (generator, trainer):
            if process is not None:
                process.wait()
        raise TrainingStopped(f"interrupted; what main.py saved is in its run folder (load_path={args.name} "
                              "continues it)", exit_code=130) from None
    if code != 0:
        raise StageFailed("main.py", code)
    total = time.perf_counter() - begin
    gen_mv_label = "gen_mv" if args.sequential else "gen_mv (from its start)"
    label = "main.py" if args.sequential else "main.py (from its start)"
    print(f"{label}: {walls['main.py']:.1f} s")
    print(f"\n| prepare_video s | {gen_mv_label} s | {label} s | total s |\n|---|---|---|---|\n"
          f"| {walls['prepare_video']:.1f} | {walls['gen_mv']:.1f} | {walls['main.py']:.1f} | **{total:.1f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
