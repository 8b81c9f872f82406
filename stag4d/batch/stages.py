"""The five stages of a clip, each run through the project's own entry point, and what "done" means.

    prepare_video -> gen_mv -> train -> visualize -> evaluate

:func:`plan_clip` turns a clip and the batch's settings into one :class:`StageJob` per stage: the
entry module and its arguments (parsed and checked here with the entry point's own parser and
config loader, so a bad override stops the batch before anything runs) and the stage's
:class:`Target`, which says whether its complete outputs exist and what to add to resume it:

* prepare_video: ``--frames`` frames in ``ref/`` (a partial set is redone with ``--overwrite``);
* gen_mv: the six views of every frame (gen_mv itself continues a partial run);
* train: a complete saved step at ``total_steps`` (:func:`stag4d.training.runs.saved_steps`; a
  step is complete when its checkpoint, written last, exists); a run with an earlier complete
  step continues from it (``load_path``);
* visualize: its videos (and contact sheet), newer than the checkpoint of the step they show;
* evaluate: ``metrics_<step>.json`` with the asked metrics, newer than that checkpoint.
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from stag4d.batch.clips import Clip
from stag4d.config import RunConfig, load_config
from stag4d.data import prepare_video as prepare_video_cmd
from stag4d.data.frames import list_ref_frames
from stag4d.errors import UserError
from stag4d.evaluation import evaluate as evaluate_cmd
from stag4d.evaluation import visualize as visualize_cmd
from stag4d.multiview import gen_mv as gen_mv_cmd
from stag4d.training import cli as train_cmd
from stag4d.training.runs import CHECKPOINT_FILE, find_saved_step, saved_steps

STAGES = ("prepare_video", "gen_mv", "train", "visualize", "evaluate")
ENTRY_MODULES = {
    "prepare_video": "stag4d.data.prepare_video",
    "gen_mv": "stag4d.multiview.gen_mv",
    "train": "stag4d.training.cli",
    "visualize": "stag4d.evaluation.visualize",
    "evaluate": "stag4d.evaluation.evaluate",
}
RUN_CONFIG_STAGES = ("train", "visualize", "evaluate")  # these take --config and key=value items
DEFAULT_GPU_STAGES = ("gen_mv", "train")
CONTACT_SHEET = "contact_sheet.png"


# ------------------------------------------------------------------------------------------------
# targets: what each stage leaves behind when it is complete


def _mtime(path: str) -> float:
    return os.path.getmtime(path) if os.path.exists(path) else float("-inf")


def _saved_step_folder(run: str, load_step: Optional[int]) -> Optional[str]:
    """The step folder visualize/evaluate would open (``load_step`` or the latest complete), or None."""
    steps = saved_steps(run)
    if not steps or (load_step is not None and load_step not in steps):
        return None
    return os.path.join(run, str(steps[-1] if load_step is None else load_step))


class Target:
    """The outputs of a stage."""

    def complete(self) -> bool:
        raise NotImplementedError

    def resume_args(self) -> list[str]:
        """Arguments that make the entry point continue (or redo) a partial result."""
        return []


@dataclass
class PreparedFrames(Target):
    """prepare_video: ``frames`` files ``<i>_rgba.png`` in ``ref_dir``."""

    ref_dir: str
    frames: int

    def existing(self) -> list[str]:
        return glob.glob(os.path.join(self.ref_dir, "*_rgba.png"))

    def complete(self) -> bool:
        return all(os.path.isfile(os.path.join(self.ref_dir, f"{i}_rgba.png")) for i in range(self.frames)) \
            and len(self.existing()) == self.frames

    def resume_args(self) -> list[str]:
        # frames are written one by one: a killed run leaves some, which prepare_video refuses to
        # mix with new ones unless told to replace them
        return ["--overwrite"] if self.existing() else []


@dataclass
class AnchorViews(Target):
    """gen_mv: the six views of every reference frame of ``dataset``."""

    dataset: str

    def complete(self) -> bool:
        try:
            frames = list_ref_frames(self.dataset)
        except UserError:
            return False
        return all(gen_mv_cmd.has_views(self.dataset, i) for i, _ in frames)


@dataclass
class TrainedRun(Target):
    """train: a complete saved step ``total_steps`` under ``run``."""

    run: str
    total_steps: int

    def complete(self) -> bool:
        return self.total_steps in saved_steps(self.run)

    def resume_args(self) -> list[str]:
        earlier = [s for s in saved_steps(self.run) if s < self.total_steps]
        return [f"load_path={self.run}", f"load_step={earlier[-1]}"] if earlier else []


@dataclass
class Videos(Target):
    """visualize: ``files``, each newer than the checkpoint of the step they show."""

    run: str
    load_step: Optional[int]
    files: tuple[str, ...]

    def complete(self) -> bool:
        step = _saved_step_folder(self.run, self.load_step)
        if step is None:
            return False
        made = _mtime(os.path.join(step, CHECKPOINT_FILE))
        return all(_mtime(f) >= made for f in self.files)


@dataclass
class Metrics(Target):
    """evaluate: ``metrics_<step>.json`` holding ``metrics``, newer than the step's checkpoint.

    Render mode (``render_views=``) leaves folders of images, not scores: it always runs.
    """

    run: str
    load_step: Optional[int]
    cfg: RunConfig
    metrics: tuple[str, ...]
    render_mode: bool = False

    def _scores_of_step(self) -> tuple[Optional[str], Optional[str]]:
        """(step folder evaluate opens, its metrics file), None where absent."""
        step = _saved_step_folder(self.run, self.load_step)
        if step is None:
            return None, None
        return step, evaluate_cmd.metrics_path(self.cfg, int(os.path.basename(step)))

    def metrics_file(self) -> Optional[str]:
        """The scores of the step evaluate opens, when that file exists."""
        _, path = self._scores_of_step()
        return path if path is not None and os.path.isfile(path) else None

    def complete(self) -> bool:
        step, path = self._scores_of_step()
        if self.render_mode or step is None or _mtime(path) < _mtime(os.path.join(step, CHECKPOINT_FILE)):
            return False
        try:
            with open(path) as f:
                have = set(json.load(f).get("metrics", ()))
        except (OSError, ValueError):
            return False
        return set(self.metrics) <= have


# ------------------------------------------------------------------------------------------------
# jobs


@dataclass
class StageJob:
    """One stage of one clip: the entry point's command, its log and resources, and its outputs."""

    clip: str
    stage: str
    argv: list[str]
    target: Target
    log_file: str
    cwd: str
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @property
    def clip_dir(self) -> str:
        """The clip's batch folder: the stages' logs and records."""
        return os.path.dirname(self.log_file)

    def command(self) -> list[str]:
        """``python -m <entry module> ARGS`` plus what resumes a partial result (decided now)."""
        return [sys.executable, "-m", ENTRY_MODULES[self.stage], *self.argv, *self.target.resume_args()]


@dataclass
class BatchSettings:
    """What every clip shares: folders, stages, the run config and each stage's own arguments."""

    out: str  # absolute
    stages: tuple[str, ...] = STAGES
    config: str = "configs/stag4d.yaml"  # for train / visualize / evaluate
    overrides: list[str] = field(default_factory=list)  # run-config key=value for those three
    stage_args: dict[str, list[str]] = field(default_factory=dict)
    cwd: str = field(default_factory=os.getcwd)
    gpu_stages: tuple[str, ...] = DEFAULT_GPU_STAGES
    cpus_per_task: float = 1.0
    gpus_per_task: float = 1.0

    @property
    def datasets_dir(self) -> str:
        return os.path.join(self.out, "datasets")

    def clip_dir(self, clip: str) -> str:
        """Per-clip batch files: its stage record and the stages' logs."""
        return os.path.join(self.out, "clips", clip)


@dataclass
class ClipPlan:
    """The jobs of a clip in stage order; ``not_applicable`` stages and a clip ``error`` (then no jobs)."""

    clip: Clip
    dataset: str
    jobs: dict[str, StageJob] = field(default_factory=dict)
    not_applicable: tuple[str, ...] = ()
    error: Optional[str] = None
    run: Optional[str] = None  # <outdir>/<save_path> of the clip's run

    def trained_step(self) -> Optional[str]:
        """The latest complete step folder of the run (for the table's Gaussian count)."""
        if self.run is None:
            return None
        try:
            return find_saved_step(self.run)[0]
        except UserError:
            return None

    def metrics_file(self) -> Optional[str]:
        job = self.jobs.get("evaluate")
        return job.target.metrics_file() if job is not None and isinstance(job.target, Metrics) else None


def _parsed(stage: str, parse: Callable, argv: Sequence[str]):
    """Run an entry point's argument parser; its usage error (argparse prints and exits) becomes one
    UserError with argparse's own message."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            return parse(list(argv))
    except SystemExit as err:
        if err.code in (0, None):  # --help
            raise
        lines = printed.getvalue().strip().splitlines()
        reason = lines[-1].split("error: ", 1)[-1] if lines else "rejected"
        raise UserError(f"{stage}: {reason}: fix --{stage.replace('_', '-')}-args") from None


def split_config_flag(items: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """(``--config`` value or None, the other items) of a run-config stage's own arguments."""
    config, rest, items = None, [], list(items)
    while items:
        item = items.pop(0)
        if item == "--config":
            if not items:
                raise UserError("--config needs a file: --config configs/NAME.yaml")
            config = items.pop(0)
        elif item.startswith("--config="):
            config = item.split("=", 1)[1]
        else:
            rest.append(item)
    return config, rest


def run_config_argv(stage: str, clip: str, dataset: str, settings: BatchSettings) -> list[str]:
    """``--config FILE`` and the overrides of a train / visualize / evaluate stage.

    The batch's folders come first (``outdir``, ``valid_dir`` under the output folder; the user may
    move them), then the shared overrides, the stage's own items, and last the clip's ``path`` and
    ``save_path``, which the batch owns.
    """
    own_config, own_items = split_config_flag(settings.stage_args.get(stage, []))
    config = os.path.abspath(own_config or settings.config)
    return ["--config", config, f"outdir={os.path.join(settings.out, 'logs')}",
            f"valid_dir={os.path.join(settings.out, 'valid')}", *settings.overrides, *own_items,
            f"path={dataset}", f"save_path={clip}"]


def _run_folder(cfg: RunConfig) -> str:
    return os.path.abspath(os.path.join(cfg.output.outdir, cfg.output.save_path))


def plan_clip(clip: Clip, settings: BatchSettings) -> ClipPlan:
    """The jobs of ``clip`` for ``settings.stages`` (on CPUs; :func:`give_gpus` adds the GPUs).

    Raises:
        UserError: arguments or overrides that an entry point rejects (the same for every clip).
    """
    prepared = clip.needs_preparing and "prepare_video" in settings.stages
    dataset = os.path.join(settings.datasets_dir, clip.name) if prepared else clip.source
    plan = ClipPlan(clip, dataset)
    if clip.kind == "video" and not prepared:
        plan.error = "a video is made into a dataset by prepare_video: add it to --stages"
        return plan
    logs = settings.clip_dir(clip.name)

    def job(stage: str, argv: list[str], target: Target) -> StageJob:
        return StageJob(clip.name, stage, argv, target, os.path.join(logs, f"{stage}.log"), settings.cwd,
                        settings.cpus_per_task)

    for stage in settings.stages:
        if stage == "prepare_video":
            if not clip.needs_preparing:
                plan.not_applicable += (stage,)
                continue
            argv = [clip.source, "--name", clip.name, "--out-root", settings.datasets_dir,
                    *settings.stage_args.get(stage, [])]
            args = _parsed(stage, prepare_video_cmd.parse_args, argv)
            plan.jobs[stage] = job(stage, argv, PreparedFrames(os.path.join(dataset, "ref"), args.frames))
        elif stage == "gen_mv":
            argv = ["--path", dataset, *settings.stage_args.get(stage, [])]
            gen_mv_cmd.check_args(_parsed(stage, gen_mv_cmd.parse_args, argv))
            plan.jobs[stage] = job(stage, argv, AnchorViews(dataset))
        elif stage == "train":
            argv = run_config_argv(stage, clip.name, dataset, settings)
            cfg = load_config(*_parsed(stage, train_cmd.parse_args, argv))
            plan.run = _run_folder(cfg)
            plan.jobs[stage] = job(stage, argv, TrainedRun(plan.run, cfg.train.total_steps))
        elif stage == "visualize":
            argv = run_config_argv(stage, clip.name, dataset, settings)
            cfg, opts = visualize_cmd.load_settings(*_parsed(stage, visualize_cmd.parse_args, argv))
            if cfg.viewer.gui != "off":
                raise UserError(f"gui={cfg.viewer.gui} opens a viewer: a batch writes files; drop gui=")
            plan.run = plan.run or _run_folder(cfg)
            folder = os.path.join(cfg.output.valid_dir, cfg.output.save_path)
            files = [visualize_cmd.video_path(folder, track, mode)
                     for track, _, _ in visualize_cmd.VIDEO_TRACKS for mode in opts.modes]
            if opts.sheet_times > 0:
                files.append(os.path.join(folder, CONTACT_SHEET))
            plan.jobs[stage] = job(stage, argv, Videos(_run_folder(cfg), opts.load_step,
                                                       tuple(os.path.abspath(f) for f in files)))
        elif stage == "evaluate":
            argv = run_config_argv(stage, clip.name, dataset, settings)
            cfg, opts = evaluate_cmd.load_settings(*_parsed(stage, evaluate_cmd.parse_args, argv))
            plan.run = plan.run or _run_folder(cfg)
            plan.jobs[stage] = job(stage, argv, Metrics(_run_folder(cfg), opts.load_step, cfg, tuple(opts.metrics),
                                                        render_mode=opts.render_views is not None))
        else:
            raise UserError(f"unknown stage '{stage}': choose from {', '.join(STAGES)}")
    return plan


def give_gpus(plans: Sequence[ClipPlan], settings: BatchSettings) -> None:
    """``gpus_per_task`` GPUs for the jobs of ``settings.gpu_stages`` (when the cluster has GPUs)."""
    for plan in plans:
        for stage, job in plan.jobs.items():
            job.num_gpus = settings.gpus_per_task if stage in settings.gpu_stages else 0.0


def parse_stages(text: str) -> tuple[str, ...]:
    """``train,visualize`` -> the stages in pipeline order (a one-line error names unknown ones)."""
    names = [s.strip().replace("-", "_") for s in text.split(",") if s.strip()]
    aliases = {"main": "train"}  # the name of the training stage (main.py)
    names = [aliases.get(n, n) for n in names]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise UserError(f"--stages {text}: choose from {','.join(STAGES)} (comma-separated)")
    return tuple(s for s in STAGES if s in names)


__all__ = ["AnchorViews", "BatchSettings", "ClipPlan", "ENTRY_MODULES", "Metrics", "PreparedFrames", "STAGES",
           "StageJob", "Target", "TrainedRun", "Videos", "give_gpus", "parse_stages", "plan_clip", "run_config_argv",
           "split_config_flag"]
