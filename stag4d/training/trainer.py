"""Headless STAG4D trainer (SPEC sections 3-8): one training step, validation renders, checkpoints.

``Trainer(cfg)`` loads the frames, builds the 4D Gaussians, the optimizer, the densification
strategy and (when ``lambda_zero123 > 0``) the Zero123 guidance, each from its own section of the
run config (:class:`stag4d.config.RunConfig`). :meth:`Trainer.train_step` is one step of SPEC
section 4 and reads as the algorithm; :meth:`Trainer.train` loops with progress, validation
renders and saves. The viewers drive the same object through its public methods; this module
never imports a GUI toolkit.

Choices (documented in the README):

* The HexPlane regularizers apply in the fine stage only: in the coarse stage the deformation is
  not applied, so they would reshape the grids with no data term (as in 4D Gaussian Splatting).
* The anisotropy loss (SPEC 4.5) has weight ``lambda_anisotropy`` (1: the SPEC gives none) and is
  applied in both stages, on the scales of the last sample's Gaussians.
* Anchored mode (ours): each sample renders ``anchors_per_sample`` random non-held-out anchors
  (1 by default: six renders per sample would make a step several times slower for the same
  expected gradient) at the sample's frame, white background, loss weights ramped by step_ratio
  like the reference loss.
* Held-out anchors (``holdout_views``) and frames (``holdout_frames``) are blanked before the data
  reaches the guidance and are never sampled; a conditioning choice that falls on a held-out
  anchor uses the reference frame instead. In the coarse stage a held-out middle frame is
  replaced by the nearest training frame.
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import random
import re
import signal
import sys
import threading
import time as time_module
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from cam_utils import Camera
from gs_renderer import GaussianModel4D, write_model
from guidance import Guidance, load_guidance
from guidance.conditioning import choose_condition_view, sample_random_view
from stag4d.data.frames import load_frames
from stag4d.data.video import require_videos, to_uint8, write_video  # atomic H.264 through imageio-ffmpeg
from stag4d.device import resolve_device
from stag4d.errors import DataError, ModelUnavailable, TrainingStopped, UserError
from stag4d.files import BackgroundWriter, host_copy, save_image, torch_save, wait_for_file, write_text
from stag4d.gaussians.graphed import GraphedDeformation
from stag4d.gaussians.ply import write_gaussian_ply
from stag4d.rasterizer import (BACKENDS, GaussianParams, RenderOutput, concat_sets, render, render_batch,
                              same_view_setup)
from stag4d.settings import ConfigError, setting, to_container, to_yaml
from stag4d.training import runs
from stag4d.training.losses import anisotropy_loss, hexplane_regularizer, per_sample_mse
from stag4d.training.optim import build_optimizer

if TYPE_CHECKING:  # pragma: no cover
    from stag4d.config import RunConfig

CHECKPOINT_FORMAT = 2  # 2: plain values only (loads with weights_only=True); 1: numpy RNG arrays
# Every loss term a step can produce, in the order they are summed (losses.csv has one column each).
LOSS_KEYS = ("ref_rgb", "ref_alpha", "sds", "anchor_rgb", "anchor_alpha", "regularizer", "motion_smooth",
             "anisotropy")
NON_FINITE_EXIT_CODE = 3
JITTER_TARGETS = ("frame", "interpolated")
JITTER_DECAYS = ("none", "linear", "cosine")


@dataclass
class TrainConfig:
    """The schedule and sampling of training steps (SPEC 4; defaults = the released run)."""

    seed: int = setting(0, "seed of every random draw of the run", ge=0)
    device: str = setting("auto", "auto (cuda when available) | cpu | cuda | cuda:N")
    backend: str = setting("auto", "rasterizer: auto (gsplat on CUDA, else torch) | torch | gsplat", choices=BACKENDS)
    total_steps: int = setting(8000, "training steps (the released run stops after saving at 8000)", ge=1)
    iters: int = setting(2000, "step_ratio = min(1, step / iters): ramps the reference loss and the render size", ge=1)
    init_steps: int = setting(700, "coarse stage: no deformation, the middle frame", ge=0)
    batch_size: int = setting(4, "samples (frame, random view) per step", ge=1)
    invert_bg_prob: float = setting(0.5, "probability of a black background for a random view", ge=0, le=1)
    time_jitter: float = setting(0.0, "ours: each sample's time is its frame's plus a uniform offset of up to this "
                                 "many frame intervals either way (0 = released); at most 0.5 with "
                                 "time_jitter_target=frame", ge=0, le=1)
    time_jitter_target: str = setting("frame", "ours: the images a jittered sample is scored against: frame = its "
                                      "frame's; interpolated = blended linearly in time between the trained frames "
                                      "either side of its time", choices=JITTER_TARGETS)
    time_jitter_reference: bool = setting(True, "ours: jitter the reference view too (false: it renders at the "
                                          "frame's own time, only the anchor and random views are jittered)")
    time_jitter_reference_fraction: float = setting(1.0, "ours: with time_jitter_reference=true, the share of "
                                                    "samples whose reference view is jittered (drawn per sample; "
                                                    "the rest render at the frame's own time; unused when false)",
                                                    ge=0, le=1)
    time_jitter_window: List[float] = setting([0.0, 1.0], "ours: [start, end] fractions of the fine stage during "
                                              "which the jitter is on", ge=0, le=1)
    time_jitter_decay: str = setting("none", "ours: within the window the jitter stays (none) or falls to 0 at its "
                                     "end (linear | cosine), as annealed smooth training", choices=JITTER_DECAYS)
    render_res_ratios: List[float] = setting([0.3, 0.6], "step_ratio limits of the random-view sizes")
    render_res_sizes: List[int] = setting([128, 256, 512], "random-view sizes (one more than the limits)", ge=1)
    load_path: Optional[str] = setting(None, "resume: a run name under outdir, a run folder or a step folder")
    load_step: Optional[int] = setting(None, "resume step; null = the latest complete save", ge=0)
    overwrite: bool = setting(False, "start a new run in a save_path that holds a finished one (deletes its saves)")
    detect_anomaly: bool = setting(False, "torch autograd anomaly detection (slow; to find where a NaN starts)")
    compile_deformation: bool = setting(False, "torch.compile the deformation field, forward and backward, for any "
                                        "number of Gaussians (CUDA only; compiles at the first fine step; needs "
                                        "cuda_graph_deformation=false)")
    # on an H200 1.8 / 1.9 ms less a step, alternated in one process (benchmarks/bench_train_step.py)
    cuda_graph_deformation: bool = setting(True, "replay the deformation field's forward and backward from CUDA "
                                           "graphs in training steps, one pair per number of Gaussians (CUDA only; "
                                           "the same kernels as eager; set it false to use compile_deformation)")
    compile_regularizers: bool = setting(True, "torch.compile the HexPlane regularizers: about 190 small ops a "
                                         "step, forward and backward, in a few fused kernels (CUDA only; "
                                         "compiles at the first fine step: about 1 s from inductor's cache)")
    merge_renders: bool = setting(True, "render the reference and the random views in one rasterizer call when "
                                  "they share a size (the fine stage from step_ratio 0.6 on, at the default "
                                  "sizes): the same images, one gsplat call fewer a step")

    def check(self) -> None:
        if len(self.render_res_sizes) != len(self.render_res_ratios) + 1:
            raise ConfigError("render_res_sizes needs one more entry than render_res_ratios "
                              "(e.g. [128,256,512] and [0.3,0.6])")
        if self.load_step is not None and self.load_path is None:
            raise ConfigError("load_step is set but load_path is not: add load_path=NAME")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device={self.device} is not auto, cpu, cuda or cuda:N")
        if self.time_jitter > 0.5 and self.time_jitter_target == "frame":
            # past half an interval a sample nearer the next frame would be scored against its own
            raise ConfigError(f"time_jitter={self.time_jitter} needs time_jitter_target=interpolated (at most 0.5 "
                              "with the frame's own images)")
        if self.compile_deformation and self.cuda_graph_deformation:
            raise ConfigError("compile_deformation=true needs cuda_graph_deformation=false (the graphs capture the "
                              "eager deformation field): set one of them to false")
        start, end = (list(self.time_jitter_window) + [None, None])[:2]
        if len(self.time_jitter_window) != 2 or not start < end:
            raise ConfigError(f"time_jitter_window={list(self.time_jitter_window)}: give [start, end] with "
                              "0 <= start < end <= 1, e.g. [0, 0.5]")

    def is_coarse(self, step: int) -> bool:
        """Steps 1 .. init_steps are the coarse stage (no deformation)."""
        return step <= self.init_steps

    def time_jitter_at(self, step: int) -> float:
        """The jitter amplitude (frame intervals) at ``step``: 0 in the coarse stage and outside the
        window, else ``time_jitter`` times the decay over the window (1 -> 0 at its end).

        The fine stage runs over steps init_steps + 1 .. total_steps; its fraction is
        p = (step - init_steps) / (total_steps - init_steps).
        """
        if self.time_jitter <= 0 or self.is_coarse(step):
            return 0.0
        p = (step - self.init_steps) / max(self.total_steps - self.init_steps, 1)
        start, end = self.time_jitter_window
        if not start <= p <= end:
            return 0.0
        u = (p - start) / (end - start)  # 0 .. 1 across the window
        scale = {"none": 1.0, "linear": 1.0 - u, "cosine": 0.5 * (1.0 + math.cos(math.pi * u))}[self.time_jitter_decay]
        return self.time_jitter * scale


@dataclass
class OutputConfig:
    """Where a run writes and how often."""

    save_path: str = setting("", "run name; \"\" = the dataset folder's name")
    outdir: str = setting("logs", "checkpoints: <outdir>/<save_path>/<step>/")
    valid_dir: str = setting("valid", "validation renders: <valid_dir>/<save_path>/<step>_<front|back>/")
    save_step: int = setting(1000, "save every save_step steps and at the end (0 = only at the end; the released "
                             "run saves at 8000 only)", ge=0)
    keep_last: int = setting(2, "complete saves kept in the run folder, the latest ones (0 = keep all)", ge=0)
    valid_interval: int = setting(500, "front/back validation renders every N steps (0 = never)", ge=0)
    log_interval: int = setting(50, "losses read back from the device and logged every N steps", ge=1)
    video_fps: int = setting(10, "frames per second of the videos", ge=1)
    video_round_step: str = setting("exact", "visualize.py's turning video: 360 / F degrees per frame (exact) or "
                                    "360 // F (integer, released)", choices=("exact", "integer"))
    export_frames: bool = setting(True, "also write frames/<i>.ply (the deformed Gaussians) at every save")
    background_writes: bool = setting(True, "the training loop's saves and validation renders reach the disk on a "
                                      "worker thread while training goes on (the same files; a save is complete "
                                      "when its checkpoint.pt appears, as always)")

    def check(self) -> None:
        if self.save_path:
            runs.check_run_name(self.save_path)


# ----------------------------------------------------------------------------------------------
# small helpers


def _seconds_split(parts: Optional[dict[str, float]]) -> str:
    """`` (a 1.2 s, b 3.4 s)`` for a log line; empty without parts."""
    return f" ({', '.join(f'{part} {s:.1f} s' for part, s in parts.items())})" if parts else ""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_ratio(step: int, iters: int) -> float:
    """min(1, step / iters): the ramp of the reference loss and of the render resolution."""
    return min(1.0, step / iters)


def random_view_size(ratio: float, ratios: Sequence[float], sizes: Sequence[int]) -> int:
    """Render size of the random view: sizes[k] for the first k with ratio < ratios[k], else the last."""
    for limit, size in zip(ratios, sizes):
        if ratio < limit:
            return int(size)
    return int(sizes[-1])


def rng_state(generator: random.Random) -> dict[str, Any]:
    """Every random state a step reads: python, numpy (global and the trainer's), torch (+cuda), as
    plain values and tensors (a checkpoint loads with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "trainer": generator.getstate(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(generator: random.Random, state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    generator.setstate(state["trainer"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@dataclass
class RandomView:
    """One sample's random view (SPEC 4.2-4.3) and the image that conditions its SDS.

    Attributes:
        camera: the orbit camera; background: [3]; cond_view: -1 = reference, k = anchor k;
        rel_elevation, rel_azimuth: degrees relative to the conditioning view; d_radius: offset.
    """

    camera: Camera
    background: torch.Tensor
    cond_view: int
    rel_elevation: float
    rel_azimuth: float
    d_radius: float = 0.0


@dataclass
class Batch:
    """The random draws of one step, made before anything is rendered.

    Attributes:
        step: the global step; coarse: in the coarse stage; ratio: step_ratio.
        frames: B frame indices; times: their normalized times (jittered with ``time_jitter``).
        ref_times: the times of the reference renders (the frames' own with time_jitter_reference=false,
            and for the samples left out by time_jitter_reference_fraction).
        random_views: per sample, when the SDS is on (else empty); size: their render size.
        anchors: (sample, anchor view) pairs for the anchor losses (ours; else empty).
    """

    step: int
    coarse: bool
    ratio: float
    frames: list[int]
    times: list[float]
    ref_times: list[float] = field(default_factory=list)
    random_views: list[RandomView] = field(default_factory=list)
    size: int = 0
    anchors: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Renders:
    """The renders of one step, by kind (each a list of RenderOutputs)."""

    reference: list[RenderOutput]
    random: list[RenderOutput]
    anchors: list[RenderOutput]

    @property
    def all(self) -> list[RenderOutput]:
        """Every render of the step, in the order the densification statistic adds them."""
        return self.reference + self.random + self.anchors


# ----------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """STAG4D training state and loop.

    Attributes:
        cfg: the run config (:class:`stag4d.config.RunConfig`); each part below gets its section.
        data: the loaded frames (:class:`stag4d.data.frames.FrameData`).
        model: :class:`gs_renderer.GaussianModel4D`.
        densify, densify_state: the densification strategy (``cfg.densify``) and its statistics.
        step: number of completed training steps.
        last_step_time: wall seconds of the last ``train_step`` (host time, no device sync).
    """

    def __init__(self, cfg: "RunConfig", guidance: Optional[Guidance] = None):
        """
        Args:
            cfg: the run config (``stag4d.config.load_config``).
            guidance: an object with the :class:`guidance.Guidance` interface; None = load the
                Zero123 model of ``cfg.guidance`` when ``lambda_zero123 > 0``.

        Raises:
            errors.UserError: bad data, config or missing diffusion model (before any training).
        """
        self.cfg = cfg
        train = cfg.train
        if cfg.output.valid_interval:  # else the writer thread would fail at the first validation
            require_videos()
        self.writer = BackgroundWriter()  # saves and validations; the loop waits for it only at the end
        # The run folder first: a second writer, a finished run or a resume past the end stop here,
        # before any data or model is loaded.
        resume_folder, resume_step = None, None
        if train.load_path:
            resume_folder, resume_step = runs.find_saved_step(runs.run_folder(cfg.output.outdir, train.load_path),
                                                              train.load_step)
            if resume_step >= train.total_steps:
                raise UserError(f"{resume_folder} is step {resume_step}, not below total_steps={train.total_steps}: "
                                "nothing to train; raise total_steps= to continue it")
        same_run = resume_folder is not None and (os.path.realpath(os.path.dirname(os.path.normpath(resume_folder)))
                                                  == os.path.realpath(self.run_folder))
        self.lock = runs.RunLock(self.run_folder)
        # started beside gen_mv (wait_for=), the run may be stopped anywhere in its start-up
        with self._signals_stop_start() if cfg.data.wait_for else contextlib.nullcontext():
            self.lock.acquire()
            try:
                runs.prepare_run_folder(self.run_folder, resume_step if same_run else None, train.overwrite)
                self._build(guidance, resume_folder)
            except BaseException:
                self.close()
                with contextlib.suppress(OSError):  # a folder this failed start made and left empty
                    os.rmdir(self.run_folder)
                raise

    def _build(self, guidance: Optional[Guidance], resume_folder: Optional[str]) -> None:
        """Everything after the run folder: data, cameras, guidance, model, optimizer, resume."""
        cfg = self.cfg
        train, data_cfg, camera = cfg.train, cfg.data, cfg.camera

        self.device = resolve_device(train.device)
        self.backend = train.backend
        seed_everything(train.seed)
        # The trainer's own sampling (frames, views, backgrounds, conditioning) draws from this
        # generator; its state goes into checkpoints so that a resumed run continues identically.
        self.rng = random.Random(train.seed)

        self.guidance = guidance
        if data_cfg.wait_for:
            # Beside gen_mv: the diffusion model loads and compiles while the anchors are made; the
            # data is read once gen_mv's record (written after the last view) appears.
            if not os.path.isdir(data_cfg.path):
                raise DataError(f"dataset folder {data_cfg.path} does not exist: make it (scripts/prepare_video.py) "
                                "before starting main.py with wait_for=")
            self._start_guidance()
            waited = wait_for_file(data_cfg.wait_for, data_cfg.wait_timeout, "wait_for", "wait_timeout")
            print(f"{data_cfg.wait_for} is there (waited {waited:.1f} s): reading the data", file=sys.stderr, flush=True)

        # The SDS conditions on the anchors (the spatial anchor of STAG4D): missing ones are an error
        # unless reference-only SDS is asked for, as the released code cannot run without them.
        needs_anchors = cfg.loss.uses_anchor_images or (cfg.loss.lambda_zero123 > 0 and not cfg.loss.reference_only_sds)
        start = time_module.perf_counter()
        self.data = load_frames(data_cfg.path, ref_size=data_cfg.ref_size, anchor_size=data_cfg.anchor_size,
                                num_frames=data_cfg.num_frames, require_anchors=needs_anchors, device=self.device,
                                num_anchor_views=len(camera.anchor_views), resample=data_cfg.resample)
        self.num_frames = self.data.num_frames
        print(f"read {self.num_frames} frames{' and their anchors' if self.data.anchor_rgb is not None else ''} "
              f"in {time_module.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        self._check_data_against_config()
        self.train_frames = [i for i in range(self.num_frames) if i not in set(data_cfg.holdout_frames)]
        self.train_views = [k for k in range(self._num_anchor_views()) if k not in set(data_cfg.holdout_views)]
        if not self.train_frames:
            raise UserError(f"holdout_frames={data_cfg.holdout_frames} holds out every frame; keep at least one")
        self.middle_frame = min(self.train_frames, key=lambda i: (abs(i - self.num_frames // 2), i))

        self.ref_camera = camera.reference(data_cfg.ref_size, device=self.device)
        self.anchor_cams = camera.anchors(data_cfg.anchor_size, device=self.device)

        if not data_cfg.wait_for:  # else started above, before the wait
            self._start_guidance()
        if self.guidance is not None and cfg.loss.lambda_zero123 > 0:
            start = time_module.perf_counter()
            ref_rgb, anchor_rgb = self._training_images()
            self.guidance.prepare(ref_rgb, anchor_rgb)
            print(f"embedded the reference and anchor images for the guidance in "
                  f"{time_module.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

        self.model = GaussianModel4D.create(cfg.model, cfg.deformation, seed=train.seed, device=self.device)
        if train.compile_deformation and self.device.type == "cuda":
            # in place: the parameters and their state-dict names stay those of the plain module;
            # dynamic: densification changes the number of Gaussians every few hundred steps
            self.model.deformation.compile(dynamic=True)
        # the plane TV, time smoothness and L1 terms: many small elementwise kernels, which inductor
        # fuses (on an H200, 1.1 ms of device time a step for the 512 px planes alone)
        compile_regularizers = train.compile_regularizers and self.device.type == "cuda"
        self.hexplane_regularizer = torch.compile(hexplane_regularizer) if compile_regularizers else hexplane_regularizer
        self._graphed_deformation: Optional[GraphedDeformation] = None  # see deformation_call
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg.optim)
        self.densify = cfg.densify
        self.densify_state = self.densify.initialize_state()
        self.step = 0
        self.last_step_time = 0.0
        self._white = torch.ones(3, device=self.device)
        self._black = torch.zeros(3, device=self.device)
        self.guard = NonFiniteGuard(self)
        self._stop_signal: Optional[int] = None
        if resume_folder is not None:
            self.load_folder(resume_folder)
        self.loss_columns = [k for k in LOSS_KEYS if self._can_produce(k)]
        self._losses_header_checked = False  # losses.csv's columns, checked at the first log only

    def close(self) -> None:
        """Finish the writes in flight, then release the run folder (the lock; also done at
        interpreter exit)."""
        try:
            self.writer.wait()
        finally:
            self.lock.release()

    def _can_produce(self, key: str) -> bool:
        """Whether the config can produce the loss ``key`` (a column of losses.csv)."""
        loss = self.cfg.loss
        return {
            "ref_rgb": loss.lambda_ref_rgb > 0, "ref_alpha": loss.lambda_ref_alpha > 0, "sds": self.uses_sds,
            "anchor_rgb": self.uses_anchor_losses and loss.lambda_anchor_rgb > 0,
            "anchor_alpha": self.uses_anchor_losses and loss.lambda_anchor_alpha > 0,
            "regularizer": loss.lambda_tv > 0, "motion_smooth": loss.lambda_motion_smooth > 0,
            "anisotropy": loss.lambda_anisotropy > 0,
        }[key]

    # ------------------------------------------------------------------------------------------
    # set-up

    def _num_anchor_views(self) -> int:
        return 0 if self.data.anchor_rgb is None else int(self.data.anchor_rgb.shape[1])

    def _check_data_against_config(self) -> None:
        data_cfg = self.cfg.data
        bad = [f for f in data_cfg.holdout_frames if f >= self.num_frames]
        if bad:
            raise UserError(f"holdout_frames={data_cfg.holdout_frames}: the data has frames 0..{self.num_frames - 1}")
        views, expected = self._num_anchor_views(), len(self.cfg.camera.anchor_views)
        if views and views != expected:
            raise DataError(f"{data_cfg.path}: zero123/ holds {views} anchor views per frame but anchor_views "
                            f"lists {expected}; make anchor_views match the data")

    def _start_guidance(self) -> None:
        """Load the diffusion model when the SDS needs it and none was given, then warm it up on
        CUDA: torch.compile and the CUDA-graph captures happen here, not at the first step."""
        if self.cfg.loss.lambda_zero123 <= 0:
            return
        if self.guidance is None:
            start = time_module.perf_counter()
            self.guidance = self._load_guidance()
            split = _seconds_split(getattr(self.guidance, "load_seconds", None))
            print(f"loaded the Zero123 guidance in {time_module.perf_counter() - start:.1f} s{split}", file=sys.stderr,
                  flush=True)
        warm_up = getattr(self.guidance, "warm_up", None)
        if warm_up is None or self.device.type != "cuda":
            return
        start = time_module.perf_counter()
        if self.cfg.guidance.guidance_compile:  # without a word it would look like a hang
            print("guidance_compile: compiling the guidance (a minute or more on a new machine, seconds from "
                  "inductor's cache after that; guidance_compile=false skips it)", file=sys.stderr, flush=True)
        parts = warm_up(self.cfg.train.batch_size) or {}
        torch.cuda.synchronize(self.device)
        split = _seconds_split(parts)
        print(f"guidance ready for the first step in {time_module.perf_counter() - start:.1f} s{split}",
              file=sys.stderr, flush=True)

    def _load_guidance(self) -> Guidance:
        try:
            return load_guidance(self.cfg.guidance, self.device)
        except ModelUnavailable as err:
            reason = str(err).splitlines()[0] if str(err) else "it cannot be loaded"
            hint = "" if ("zero123_model=" in reason and "anchored.yaml" in reason) else (
                "; point zero123_model= at a local diffusers folder, or train without it: "
                "--config configs/anchored.yaml"
            )
            raise ModelUnavailable(f"lambda_zero123={self.cfg.loss.lambda_zero123} needs Zero123: {reason}{hint}") from err

    def _training_images(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Reference [T, 3, S, S] and anchor [T, V, 3, A, A] images with held-out data blanked (white).

        Blanking (rather than trusting index bookkeeping alone) guarantees held-out frames and
        views cannot leak into the guidance's embeddings.
        """
        held_frames, held_views = list(self.cfg.data.holdout_frames), list(self.cfg.data.holdout_views)
        ref_rgb = self.data.ref_rgb.clone()
        if held_frames:
            ref_rgb[held_frames] = 1.0
        anchor_rgb = self.data.anchor_rgb
        if anchor_rgb is not None:
            anchor_rgb = anchor_rgb.clone()
            if held_frames:
                anchor_rgb[held_frames] = 1.0
            if held_views:
                anchor_rgb[:, held_views] = 1.0
        return ref_rgb, anchor_rgb

    @property
    def uses_sds(self) -> bool:
        return self.guidance is not None and self.cfg.loss.lambda_zero123 > 0

    @property
    def uses_anchor_losses(self) -> bool:
        return self.cfg.loss.uses_anchor_images and bool(self.train_views)

    # ------------------------------------------------------------------------------------------
    # one step

    def frame_time(self, frame: int) -> float:
        """Normalized time of a frame: t = i / T."""
        return frame / self.num_frames

    def train_step(self) -> dict[str, Any]:
        """One training step (SPEC section 4): draws, renders, losses, Adam step, densification.

        Returns:
            detached losses (0-dim tensors, no host sync) and ``num_gaussians``, ``step`` (ints).
        """
        start = time_module.perf_counter()
        self.step += 1
        self.model.train()
        if self._graphed_deformation is not None:
            self._graphed_deformation.begin_step()  # the last step's backward is done
        self.scheduler.step(self.step)

        with torch.autograd.detect_anomaly() if self.cfg.train.detect_anomaly else contextlib.nullcontext():
            batch = self.sample_batch(self.step)
            gaussians = self.deform(batch)
            renders = self.render_views(gaussians, batch)
            losses = self.compute_losses(batch, gaussians, renders)
            total = torch.stack(list(losses.values())).sum()
            self.backward(total)
        self.guard.before_update(losses, total)  # a non-finite gradient never reaches the parameters
        self.optimizer_step()
        self.guard.after_update()
        self.densify_step(renders, self.step)

        self.last_step_time = time_module.perf_counter() - start
        result: dict[str, Any] = {k: v.detach() for k, v in losses.items()}
        result["loss"] = total.detach()
        result["num_gaussians"] = self.model.num
        result["step"] = self.step
        return result

    def sample_batch(self, step: int) -> Batch:
        """Frames (the middle one in the coarse stage), then per sample a random view with its
        background and conditioning (when the SDS is on), then the anchors of the anchor losses."""
        train = self.cfg.train
        coarse = train.is_coarse(step)
        ratio = step_ratio(step, train.iters)
        if coarse:
            frames = [self.middle_frame] * train.batch_size
        else:
            frames = [self.train_frames[self.rng.randrange(len(self.train_frames))] for _ in range(train.batch_size)]
        times = [self.frame_time(i) for i in frames]
        ref_times = times
        jitter = train.time_jitter_at(step)
        if jitter > 0:  # continuous times between frames (ours)
            spread = jitter / self.num_frames
            times = [min(max(t + self.rng.uniform(-spread, spread), 0.0), (self.num_frames - 1) / self.num_frames)
                     for t in times]
            # the reference view has a true image at the frame's time only; off, it stays there
            if train.time_jitter_reference:
                share = train.time_jitter_reference_fraction
                # no draws at the default 1, so runs without the option keep their random stream
                ref_times = times if share >= 1 else [t if self.rng.random() < share else r
                                                      for t, r in zip(times, ref_times)]
        batch = Batch(step, coarse, ratio, frames, times, list(ref_times))
        if self.uses_sds:
            batch.size = random_view_size(ratio, train.render_res_ratios, train.render_res_sizes)
            batch.random_views = self._on_device([self._random_view(batch.size, t) for t in batch.times])
        if self.uses_anchor_losses:
            per_sample = min(self.cfg.loss.anchors_per_sample or len(self.train_views), len(self.train_views))
            batch.anchors = [(b, view) for b in range(len(frames)) for view in self.rng.sample(self.train_views, per_sample)]
        return batch

    def _random_view(self, size: int, time: float) -> RandomView:
        """A random orbit camera (SPEC 4.2), its background and its SDS conditioning (SPEC 4.3)."""
        d_elevation, azimuth = sample_random_view(self.rng, self.cfg.camera.elevation)
        camera = self.cfg.camera.orbit(d_elevation, azimuth, size, time)  # on the CPU: see _on_device
        invert = self.rng.random() < self.cfg.train.invert_bg_prob
        view, rel_elevation, rel_azimuth = self._condition(azimuth, d_elevation)
        return RandomView(camera, self._black if invert else self._white, view, rel_elevation, rel_azimuth)

    def _on_device(self, views: list[RandomView]) -> list[RandomView]:
        """The views with their cameras' matrices moved to the device in ONE copy: a copy from
        pageable memory waits for the device queue to drain, and the GPU then idles while the host
        builds the next camera, so one copy a step instead of one per view."""
        if not views or self.device.type == "cpu":
            return views
        matrices = torch.stack([v.camera.world_to_camera for v in views]).to(self.device)
        return [replace(v, camera=replace(v.camera, world_to_camera=m)) for v, m in zip(views, matrices)]

    def _condition(self, azimuth: float, d_elevation: float) -> tuple[int, float, float]:
        """SDS conditioning (SPEC 4.3): (view, relative elevation, relative azimuth); view -1 = reference."""
        if not self.train_views:
            return -1, float(d_elevation), float(azimuth)
        view, rel_elevation, rel_azimuth = choose_condition_view(azimuth, d_elevation, self.cfg.camera.anchor_table,
                                                                 self.rng)
        if view >= 0 and view not in self.train_views:
            return -1, float(d_elevation), float(azimuth)  # a held-out anchor is never shown to the guidance
        return int(view), float(rel_elevation), float(rel_azimuth)

    def deform(self, batch: Batch) -> Sequence[GaussianParams]:
        """The Gaussians of each sample: canonical in the coarse stage (no deformation), else
        deformed to the sample's time (one deformation call for the batch, kept as a
        :class:`GaussianBatch`). When the reference renders have their own times
        (``time_jitter_reference=false``, or a ``time_jitter_reference_fraction`` below 1) the
        sequence has 2B entries: the samples' times, then the reference times. The times reach the
        device in a pinned, non-blocking copy (a pageable one would wait for the device queue)."""
        if batch.coarse:
            return [self.model.gaussians_at(None)] * len(batch.frames)
        times = batch.times + batch.ref_times if self._separate_ref_times(batch) else batch.times
        return self.model.gaussian_batch_at_times(self._host_to_device(times, torch.float32),
                                                  deformation=self.deformation_call())

    def deformation_call(self):
        """The deformation field of training steps: the model's, or with ``cuda_graph_deformation``
        on CUDA its :class:`GraphedDeformation` (made again when the model's field is replaced, as
        by a resume)."""
        if not (self.cfg.train.cuda_graph_deformation and self.device.type == "cuda"):
            return self.model.deformation
        if self._graphed_deformation is None or self._graphed_deformation.field is not self.model.deformation:
            self._graphed_deformation = GraphedDeformation(self.model.deformation)
        return self._graphed_deformation

    def _separate_ref_times(self, batch: Batch) -> bool:
        return not batch.coarse and self.cfg.loss.uses_reference and batch.ref_times != batch.times

    def render_views(self, gaussians: Sequence[GaussianParams], batch: Batch) -> Renders:
        """Reference views (white), random views (their backgrounds) and anchor views (white)."""
        reference: list[RenderOutput] = []
        random: list[RenderOutput] = []
        anchors: list[RenderOutput] = []
        b = len(batch.frames)
        separate = self._separate_ref_times(batch)
        ref_gaussians = gaussians[b:] if separate else gaussians
        ref_cameras = ([self.ref_camera.with_time(t) for t in (batch.ref_times or batch.times)]
                       if self.cfg.loss.uses_reference else [])
        ref_backgrounds = self._white.expand(len(ref_cameras), 3)
        gaussians = gaussians[:b] if separate else gaussians
        views = batch.random_views or []
        random_cameras = [v.camera for v in views]
        random_backgrounds = torch.stack([v.background for v in views]) if views else None
        if self.cfg.train.merge_renders and ref_cameras and views and same_view_setup(ref_cameras + random_cameras):
            # one call for both kinds: rasterizing B + B images at once gives each image what two calls give it
            both = render_batch(concat_sets(ref_gaussians, gaussians), ref_cameras + random_cameras,
                                torch.cat([ref_backgrounds, random_backgrounds]), backend=self.backend)
            reference, random = both[:len(ref_cameras)], both[len(ref_cameras):]
        else:
            if ref_cameras:
                reference = render_batch(ref_gaussians, ref_cameras, ref_backgrounds, backend=self.backend)
            if views:
                random = render_batch(gaussians, random_cameras, random_backgrounds, backend=self.backend)
        if batch.anchors:
            cameras = [self.anchor_cams[view].with_time(batch.times[b]) for b, view in batch.anchors]
            anchors = render_batch([gaussians[b] for b, _ in batch.anchors], cameras,
                                   self._white.expand(len(cameras), 3), backend=self.backend)
        return Renders(reference, random, anchors)

    def compute_losses(self, batch: Batch, gaussians: Sequence[GaussianParams],
                       renders: Renders) -> dict[str, torch.Tensor]:
        """The weighted loss terms of the step (SPEC 4.1-4.5, and ours: the anchor losses)."""
        cfg, ratio, frames = self.cfg.loss, batch.ratio, batch.frames
        losses: dict[str, torch.Tensor] = {}
        # the target images of each sample: its frame's, or blended between trained frames (ours)
        blend = [self.target_frames(f, t) for f, t in zip(frames, batch.times)]
        ref_times = batch.ref_times or batch.times
        ref_blend = blend if ref_times == batch.times else [self.target_frames(f, t) for f, t in zip(frames, ref_times)]
        # 1. reference view: per-sample MSE summed over samples, as the released loop adds one loss per sample
        if renders.reference:
            if cfg.lambda_ref_rgb > 0:
                images = torch.stack([o.image for o in renders.reference])
                losses["ref_rgb"] = ratio * cfg.lambda_ref_rgb * per_sample_mse(
                    images, self._targets(self.data.ref_rgb, ref_blend))
            if cfg.lambda_ref_alpha > 0:
                alphas = torch.stack([o.alpha for o in renders.reference])
                losses["ref_alpha"] = ratio * cfg.lambda_ref_alpha * per_sample_mse(
                    alphas, self._targets(self.data.ref_mask, ref_blend))
        # 2-3. SDS of the random views (one batched guidance call)
        if renders.random:
            losses["sds"] = cfg.lambda_zero123 * self._sds_loss(renders.random, batch)
        # ours: anchor views at their poses, normalized by anchors per sample so that the weight
        # means the same with one anchor or all of them
        if renders.anchors:
            per_sample = len(batch.anchors) / len(frames)
            images = torch.stack([o.image for o in renders.anchors])
            alphas = torch.stack([o.alpha for o in renders.anchors])
            targets_rgb = torch.stack([self._target(self.data.anchor_rgb, blend[b], view) for b, view in batch.anchors])
            targets_mask = torch.stack([self._target(self.data.anchor_mask, blend[b], view) for b, view in batch.anchors])
            if cfg.lambda_anchor_rgb > 0:
                losses["anchor_rgb"] = ratio * cfg.lambda_anchor_rgb * (per_sample_mse(images, targets_rgb) / per_sample)
            if cfg.lambda_anchor_alpha > 0:
                losses["anchor_alpha"] = ratio * cfg.lambda_anchor_alpha * (
                    per_sample_mse(alphas, targets_mask) / per_sample)
        # 4. HexPlane regularizers (fine stage; every step with regularize_coarse, as released),
        # 5. anisotropy of the last sample's scales
        if (not batch.coarse or cfg.regularize_coarse) and cfg.lambda_tv > 0:
            losses["regularizer"] = self.hexplane_regularizer(self.model.deformation, cfg)
        if not batch.coarse and cfg.lambda_motion_smooth > 0:
            losses["motion_smooth"] = cfg.lambda_motion_smooth * self._motion_smoothness()
        if cfg.lambda_anisotropy > 0:
            losses["anisotropy"] = cfg.lambda_anisotropy * anisotropy_loss(
                gaussians[len(frames) - 1].log_scales, cfg.scale_loss_ratio, activated=cfg.anisotropy_activated)
        return losses

    def _motion_smoothness(self) -> torch.Tensor:
        """Mean squared second difference in time of the deformed centres at a random time u, half a
        frame either side, per (frame interval)^2: the acceleration of the Gaussians' trajectories."""
        half = 0.5 / self.num_frames
        last = (self.num_frames - 1) / self.num_frames
        u = half + self.rng.random() * max(last - 2 * half, 0.0)
        means = self.deformation_call()(self.model.means, self.model.log_scales, self.model.quats, None,
                                        torch.tensor([u - half, u, u + half], device=self.device)).means
        second = (means[0] - 2.0 * means[1] + means[2]) / (half * self.num_frames) ** 2
        return second.square().sum(dim=-1).mean()

    def _sds_loss(self, random_renders: list[RenderOutput], batch: Batch) -> torch.Tensor:
        views = batch.random_views
        return self.guidance.sds_loss(
            torch.stack([o.image for o in random_renders]),
            self._host_to_device(batch.frames, torch.long),
            self._host_to_device([v.cond_view for v in views], torch.long),
            self._host_to_device([v.rel_elevation for v in views], torch.float32),
            self._host_to_device([v.rel_azimuth for v in views], torch.float32),
            self._host_to_device([v.d_radius for v in views], torch.float32),
            batch.step,
        )

    def backward(self, total: torch.Tensor) -> None:
        total.backward()

    def optimizer_step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def check_finite(self) -> None:
        """Stop (:class:`TrainingStopped`, nothing saved) when a step since the last check had a
        non-finite loss, gradient or parameter (a host sync on the GPU)."""
        self.guard.check()

    def densify_step(self, renders: Renders, step: int) -> dict[str, Any]:
        """Add the step's screen-space gradients to the statistics; clone / split / prune on schedule."""
        self.densify.accumulate(self.densify_state, renders.all, step)
        return self.densify.step(self.model, self.optimizer, self.densify_state, step)

    def _host_to_device(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        """Small host list -> device tensor without a stream sync (pinned, non-blocking copy)."""
        pinned = self.device.type == "cuda"
        return torch.tensor(values, dtype=dtype, pin_memory=pinned).to(self.device, non_blocking=True)

    def target_frames(self, frame: int, time: float) -> tuple[int, int, float]:
        """(a, b, w): a sample's target image is (1 - w) image[a] + w image[b].

        With ``time_jitter_target=frame`` (or at the frame's own time) it is the frame's image
        (frame, frame, 0). With ``interpolated``: a and b are the nearest trained frames at or before
        and at or after the time (a held-out frame is skipped), w the time's place between them; the
        nearer one alone when the time lies beyond the first or last trained frame.
        """
        if self.cfg.train.time_jitter_target == "frame" or time == self.frame_time(frame):
            return frame, frame, 0.0
        x = time * self.num_frames
        before = [i for i in self.train_frames if i <= x]
        after = [i for i in self.train_frames if i >= x]
        if not before or not after:
            nearest = after[0] if not before else before[-1]
            return nearest, nearest, 0.0
        a, b = before[-1], after[0]
        return (a, a, 0.0) if a == b else (a, b, (x - a) / (b - a))

    @staticmethod
    def _target(images: torch.Tensor, blend: tuple[int, int, float], *index: int) -> torch.Tensor:
        """One target image from ``target_frames``'s (a, b, w): images[a, *index] blended with images[b, *index]."""
        a, b, w = blend
        if w == 0.0:
            return images[(a, *index)]
        return (1.0 - w) * images[(a, *index)] + w * images[(b, *index)]

    def _targets(self, images: torch.Tensor, blends: list[tuple[int, int, float]]) -> torch.Tensor:
        """The targets of the samples [B, ...] (integer views, no index tensor copied to the device)."""
        return torch.stack([self._target(images, blend) for blend in blends])

    # ------------------------------------------------------------------------------------------
    # loop

    def train(self, iters: Optional[int] = None) -> None:
        """Train ``iters`` more steps (None = up to ``total_steps``), validating and saving on schedule.

        SIGINT (Ctrl-C) and SIGTERM save the current step and stop (:class:`TrainingStopped`); a
        non-finite loss, gradient or parameter stops without saving. Progress goes to a bar on a
        terminal and to one line per ``log_interval`` steps otherwise.
        """
        out = self.cfg.output
        end = self.cfg.train.total_steps if iters is None else self.step + int(iters)
        if self.step >= end:
            return
        sums: dict[str, torch.Tensor] = {}
        count = 0
        first_step, train_start = self.step, time_module.perf_counter()
        interval_start = train_start
        bar = tqdm(total=end - self.step, desc=out.save_path, dynamic_ncols=True, disable=not sys.stderr.isatty())
        with self._stop_on_signals():
            try:
                while self.step < end:
                    result = self.train_step()
                    for key, value in result.items():
                        if isinstance(value, torch.Tensor):
                            sums[key] = sums[key] + value if key in sums else value
                    count += 1
                    bar.update(1)
                    if count >= out.log_interval or self.step == end:
                        # one host sync per log interval: the losses, and the non-finite check
                        self.check_finite()
                        means = {k: float(v) / count for k, v in sums.items()}
                        ms = 1000.0 * (time_module.perf_counter() - interval_start) / count
                        self._log(means, result["num_gaussians"])
                        if bar.disable:
                            print(f"{out.save_path} step {self.step}/{end}: loss {means['loss']:.5g}, "
                                  f"{result['num_gaussians']} Gaussians, {ms:.1f} ms/step", file=sys.stderr,
                                  flush=True)
                        bar.set_postfix(step=self.step, n=result["num_gaussians"],
                                        **{k: f"{v:.4g}" for k, v in means.items()})
                        sums, count, interval_start = {}, 0, time_module.perf_counter()
                    if out.valid_interval and self.step % out.valid_interval == 0:
                        self.validate(self.step, wait=not out.background_writes)
                    if out.save_step and self.step % out.save_step == 0:
                        self.save(self.step, wait=not out.background_writes)
                    if self._stop_signal is not None:
                        self._stop_after_signal()
            except KeyboardInterrupt:  # a second signal: stop at once (a save in flight stays incomplete)
                raise
            except BaseException:
                # the saves queued before the failure are complete and valid: let them reach the disk
                with contextlib.suppress(Exception):
                    self.writer.wait()
                raise
            finally:
                bar.close()
        steps_s, start = time_module.perf_counter() - train_start, time_module.perf_counter()
        if out.save_step and self.step % out.save_step == 0:
            self.writer.wait()
        else:
            self.save(self.step)
        print(f"{out.save_path}: steps {first_step + 1} to {self.step} in {steps_s:.1f} s "
              f"({1000 * steps_s / (self.step - first_step):.1f} ms/step with saves and validations), then "
              f"{time_module.perf_counter() - start:.1f} s for the writes in flight and the last save",
              file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def _signals_stop_start(self) -> Iterator[None]:
        """SIGINT and SIGTERM end the start-up at once, in one line: nothing was trained, so nothing
        is saved, and the run folder is released (e.g. video_to_4d stops a main.py that waits for a
        gen_mv that failed)."""

        def handler(signum, frame):
            raise TrainingStopped(f"stopped by {signal.Signals(signum).name} while starting (wait_for="
                                  f"{self.cfg.data.wait_for}): nothing was trained", exit_code=128 + signum)

        with _handling_stop_signals(handler):
            yield

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM set a flag that the loop reads after the step in progress (a second
        signal stops at once)."""

        def handler(signum, frame):
            if self._stop_signal is not None:  # the second one: no more waiting
                signal.signal(signum, signal.SIG_DFL)
                raise KeyboardInterrupt
            self._stop_signal = signum

        with _handling_stop_signals(handler):
            yield

    def _stop_after_signal(self) -> None:
        signum = self._stop_signal
        self._stop_signal = None
        folder = self.save(self.step)
        name = signal.Signals(signum).name
        raise TrainingStopped(f"stopped by {name} at step {self.step}: saved {folder}; continue with "
                              f"load_path={self.cfg.output.save_path}", exit_code=128 + signum)

    def _log(self, means: dict[str, float], num_gaussians: int) -> None:
        """Append the mean losses of the last interval to ``<outdir>/<save_path>/losses.csv``, whose
        columns are every loss the config can produce (a term absent at a step is left empty)."""
        path = os.path.join(self.run_folder, runs.LOSSES_FILE)
        header = ["step", "num_gaussians", "loss"] + self.loss_columns
        if not self._losses_header_checked:  # this run is the file's only writer (the run lock)
            if runs.losses_header(path) != header:
                runs.write_losses_header(path, header)
            self._losses_header_checked = True
        cells = [str(self.step), str(num_gaussians)] + [f"{means[k]:.6g}" if k in means else ""
                                                        for k in header[2:]]
        with open(path, "a") as f:
            f.write(",".join(cells) + "\n")

    # ------------------------------------------------------------------------------------------
    # rendering and outputs

    @property
    def run_folder(self) -> str:
        return os.path.join(self.cfg.output.outdir, self.cfg.output.save_path)

    @torch.no_grad()
    def gaussians_at(self, time: Optional[float] = None, scale_modifier: float = 1.0) -> GaussianParams:
        """The model's Gaussians, deformed at normalized ``time`` (None: canonical), without autograd
        (what :meth:`render` draws; the web viewer sends them to the browser)."""
        return self.model.gaussians_at(time, scale_modifier)

    @torch.no_grad()
    def render(self, camera: Camera, time: Optional[float] = None, background: Sequence[float] = (1.0, 1.0, 1.0),
               scale_modifier: float = 1.0) -> RenderOutput:
        """Render the model from ``camera``.

        Args:
            camera: any camera (moved to the trainer's device).
            time: normalized time in [0, 1) (deformation applied), or None for the canonical
                Gaussians (what the coarse stage trains).
            background: RGB in [0, 1].
            scale_modifier: multiplies every Gaussian's scale (viewer slider).
        """
        gaussians = self.gaussians_at(time)
        if time is not None:
            camera = camera.with_time(float(time))
        bg = torch.tensor([float(c) for c in background], device=self.device)
        return render(gaussians, camera.to(self.device), bg, backend=self.backend, scale_modifier=scale_modifier)

    @torch.no_grad()
    def validate(self, step: int, wait: bool = True) -> list[str]:
        """Front (azimuth 0) and back (180) renders of every frame: NN.jpg and video.mp4 per view.

        Renders now; the files are written by :attr:`writer`, before returning when ``wait``.

        Returns:
            the folders written, ``<valid_dir>/<save_path>/<step>_<front|back>``.
        """
        out = self.cfg.output
        views = []
        for name, azimuth in (("front", 0.0), ("back", 180.0)):
            folder = os.path.join(out.valid_dir, out.save_path, f"{step}_{name}")
            camera = self.cfg.camera.orbit(0.0, azimuth, self.cfg.data.ref_size, device=self.device)
            views.append((folder, [to_uint8(self.render(camera, self.frame_time(i)).image)
                                   for i in range(self.num_frames)]))

        def write() -> None:
            for folder, frames in views:
                for i, image in enumerate(frames):
                    save_image(os.path.join(folder, f"{i:02d}.jpg"), image)
                write_video(os.path.join(folder, "video.mp4"), frames, fps=out.video_fps)

        self.writer.submit(write)
        if wait:
            self.writer.wait()
        return [folder for folder, _ in views]

    def save(self, step: Optional[int] = None, wait: bool = True) -> str:
        """Write ``<outdir>/<save_path>/<step>/``: model.ply, deformation.pt, config.yaml, frames/, and
        last (atomically) checkpoint.pt, whose presence marks the folder as complete.

        Everything is copied to the host now; the files are written by :attr:`writer`, before
        returning when ``wait``.
        """
        step = self.step if step is None else int(step)
        self.check_finite()
        bad = [name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise TrainingStopped(f"step {step}: parameters {', '.join(bad)} are not finite; not saved (the last "
                                  f"complete save is kept)", exit_code=NON_FINITE_EXIT_CODE)
        folder = os.path.join(self.run_folder, str(step))
        model = self.model.saved_state()
        config = to_yaml(self.cfg)
        frames = [self.model.frame_arrays(self.frame_time(i)) for i in range(self.num_frames)] \
            if self.cfg.output.export_frames else []
        checkpoint = host_copy(self.checkpoint_state())
        run_folder, keep_last = self.run_folder, self.cfg.output.keep_last

        def write() -> None:
            write_model(folder, *model)
            write_text(os.path.join(folder, runs.CONFIG_FILE), config)
            for i, arrays in enumerate(frames):
                write_gaussian_ply(os.path.join(folder, "frames", f"{i}.ply"), arrays)
            torch_save(checkpoint, os.path.join(folder, runs.CHECKPOINT_FILE))
            runs.delete_old_saves(run_folder, keep_last)

        self.writer.submit(write)
        if wait:
            self.writer.wait()
        return folder

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "densify": dict(self.densify_state),
            "rng": rng_state(self.rng),
            "config": to_container(self.cfg),
        }

    def load(self, load_path: str, load_step: Optional[int] = None) -> str:
        """Resume from a saved step (the latest complete one when ``load_step`` is None).

        ``load_path`` is a run name under ``outdir``, a run folder or a step folder.

        Returns:
            the folder loaded.
        """
        folder, _ = runs.find_saved_step(runs.run_folder(self.cfg.output.outdir, load_path), load_step)
        return self.load_folder(folder)

    def load_folder(self, folder: str) -> str:
        """Restore a complete saved step: parameters (any Gaussian count), optimizer state,
        densification statistics, the step and every random state; the current config is kept."""
        state = read_checkpoint(os.path.join(folder, runs.CHECKPOINT_FILE), self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer, self.scheduler = build_optimizer(self.model, self.cfg.optim)
        self.optimizer.load_state_dict(state["optimizer"])
        self.densify_state = {**self.densify.initialize_state(), **state["densify"]}
        set_rng_state(self.rng, state["rng"])
        self.step = int(state["step"])
        self.guard.reset()
        return folder


# numpy's array reconstruction, needed by format-1 checkpoints (their numpy RNG state): it builds
# arrays, nothing else, so it is safe to allow (under both its numpy 1 and numpy 2 names)
_NUMPY_ARRAY_GLOBALS = [np._core.multiarray._reconstruct, (np._core.multiarray._reconstruct,
                                                           "numpy.core.multiarray._reconstruct"),
                        np.ndarray, np.dtype, np.dtypes.UInt32DType]


@contextlib.contextmanager
def _handling_stop_signals(handler) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM inside the block, the previous handlers after it. Only in
    the main thread, where Python delivers signals (elsewhere the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def read_checkpoint(path: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A ``checkpoint.pt``, loaded with ``weights_only=True``: tensors and plain values only, so a
    file whose pickle would run code is refused (one line naming what it asked for).

    Raises:
        DataError: unreadable, not a checkpoint of this project, or of an unknown format.
    """
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not even a readable archive
            unsafe = []
        raise DataError(f"{path} is not a checkpoint of this project: refused to load it (it asks for "
                        f"{', '.join(unsafe) or 'objects that are not tensors'}); use a checkpoint that "
                        "main.py wrote") from None
    except Exception as err:
        raise DataError(f"{path} cannot be read ({type(err).__name__}); pick another load_step=") from None
    if not isinstance(state, dict) or state.get("format") not in (1, CHECKPOINT_FORMAT):
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise DataError(f"{path} has checkpoint format {found}, expected {CHECKPOINT_FORMAT}")
    return state


class NonFiniteGuard:
    """Stops training at the first step whose loss, gradient or parameter is not finite.

    Per step, on the device and without a host sync: one flag per loss term, the total, each
    parameter group's gradients (before the Adam update) and parameters (after it); the first bad
    step's flags are kept. With fused Adam on CUDA the flag also skips that step's update on the
    device (the optimizer's ``found_inf``), so a non-finite gradient never reaches the parameters,
    and :meth:`check` (a sync) runs when the trainer syncs anyway: at each log interval, before a
    save or a validation. Elsewhere (CPU, unfused Adam) :meth:`check` runs after every step.
    """

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self._owner_index: dict[tuple[int, ...], torch.Tensor] = {}  # see _group_norms
        self.reset()

    def reset(self) -> None:
        self.first_bad: Optional[torch.Tensor] = None  # steps after the last check, -1 = none
        self.flags: Optional[torch.Tensor] = None
        self.since_check: Optional[torch.Tensor] = None
        self.pending: Optional[torch.Tensor] = None
        self.checked_step = self.trainer.step

    @property
    def _fused(self) -> bool:
        optimizer = self.trainer.optimizer
        return bool(optimizer.defaults.get("fused")) and self.trainer.device.type == "cuda"

    def _group_norms(self, tensors: str) -> torch.Tensor:
        """[G] float32: per parameter group, the sum of its gradients' (``"grad"``) or parameters'
        (``"param"``) L2 norms; not finite iff one of its values is not finite (or the sum overflows).
        One ``_foreach_norm`` over every group and one ``index_add_``: a few launches a step instead
        of a few per group, since the step's host time is GPU idle time here (the step is launch-bound)."""
        groups = self.trainer.optimizer.param_groups
        items, owners = [], []
        for g, group in enumerate(groups):
            for p in group["params"]:
                t = p.grad if tensors == "grad" else p.detach()
                if t is not None and t.numel():
                    items.append(t)
                    owners.append(g)
        sums = torch.zeros(len(groups), device=self.trainer.device)
        if items:
            key = tuple(owners)
            index = self._owner_index.get(key)
            if index is None:  # a host-to-device copy, once per layout of the groups
                index = self._owner_index[key] = torch.tensor(owners, device=self.trainer.device)
            sums.index_add_(0, index, torch.stack(torch._foreach_norm(items)).float())
        return sums

    def names(self) -> list[str]:
        groups = [g.get("name", str(i)) for i, g in enumerate(self.trainer.optimizer.param_groups)]
        return ([f"the loss '{k}'" for k in LOSS_KEYS] + ["the total loss"]
                + [f"the gradients of the '{g}' parameters" for g in groups]
                + [f"the '{g}' parameters after the Adam step" for g in groups])

    @torch.no_grad()
    def before_update(self, losses: dict[str, torch.Tensor], total: torch.Tensor) -> None:
        zero = torch.zeros((), device=self.trainer.device)
        values = [losses[k].detach().float() if k in losses else zero for k in LOSS_KEYS] + [total.detach().float()]
        self.pending = ~torch.isfinite(torch.cat([torch.stack(values), self._group_norms("grad")]))
        if self._fused:  # skip this step's update on the device when anything is not finite
            self.trainer.optimizer.found_inf = self.pending.any().float()
        else:  # stop before the update touches the parameters
            self._record(torch.cat([self.pending, torch.zeros(len(self.trainer.optimizer.param_groups),
                                                              dtype=torch.bool, device=self.pending.device)]))
            self.check()

    @torch.no_grad()
    def after_update(self) -> None:
        params = ~torch.isfinite(self._group_norms("param"))
        self._record(torch.cat([self.pending if self._fused else torch.zeros_like(self.pending), params]))
        self.since_check += 1
        if not self._fused:
            self.check()

    def _record(self, bad: torch.Tensor) -> None:
        """Keep the flags of the first bad step since the last check (on the device, no sync)."""
        if self.first_bad is None or self.flags is None or self.flags.shape != bad.shape:
            self.first_bad = torch.full((), -1, dtype=torch.long, device=bad.device)
            self.since_check = torch.zeros((), dtype=torch.long, device=bad.device)
            self.flags = torch.zeros_like(bad)
        new = bad.any() & (self.first_bad < 0)
        self.first_bad = torch.where(new, self.since_check, self.first_bad)
        self.flags = torch.where(new, bad, self.flags)

    def check(self) -> None:
        if self.first_bad is None:
            return
        offset = int(self.first_bad)
        if offset >= 0:
            step = self.checked_step + offset + 1
            which = [name for name, bad in zip(self.names(), self.flags.tolist()) if bad]
            saved = runs.saved_steps(self.trainer.run_folder)
            kept = f"the last complete save is {self.trainer.run_folder}/{saved[-1]}" if saved else "nothing was saved"
            raise TrainingStopped(
                f"step {step}: {', '.join(which[:3])} not finite (NaN or inf); stopped without saving, {kept}; "
                "lower the learning rates or loss weights, or find the cause with detect_anomaly=true",
                exit_code=NON_FINITE_EXIT_CODE)
        self.first_bad.fill_(-1)
        self.since_check.zero_()
        self.checked_step = self.trainer.step


__all__ = ["Batch", "NonFiniteGuard", "OutputConfig", "read_checkpoint", "RandomView", "Renders", "TrainConfig", "Trainer", "random_view_size",
           "step_ratio"]
