"""Headless STAG4D trainer (SPEC sections 3-8): one training step, validation renders, checkpoints.

``Trainer(cfg)`` loads the frames, builds the 4D Gaussians, the optimizer, the densification
strategy and (when ``lambda_zero123 > 0``) the Zero123 guidance. ``train_step()`` runs one step of
SPEC section 4; ``train()`` loops with a progress bar, validation renders and saves. The viewer
(``viewer.py``) drives the same object; this module never imports dearpygui.

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
import glob
import math
import os
import random
import time as time_module
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch.profiler import record_function

import cam_utils
import config_utils
import io_utils
from cam_utils import Camera
from errors import DataError, ModelUnavailable, UserError
from rasterizer.types import GaussianParams, RenderOutput
from video_utils import write_video  # atomic H.264 through the ffmpeg binary (imageio-ffmpeg)

CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------------------------
# small helpers


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; a CUDA name without CUDA is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    return torch.device(name)


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


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> uint8 [H, W, 3]."""
    return (image.detach().clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()


def rng_state(generator: random.Random) -> dict[str, Any]:
    """Every random state a step reads: python, numpy (global and the trainer's), torch (+cuda)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "trainer": generator.getstate(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(generator: random.Random, state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    generator.setstate(state["trainer"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def checkpoint_folder(outdir: str, load_path: str, load_step: Optional[int]) -> str:
    """Folder of a saved step: ``load_path`` is a run name under ``outdir`` or a folder.

    ``load_step`` None = the latest step that has a ``checkpoint.pt`` (a save interrupted before
    its checkpoint was written is skipped).
    """
    candidates = [load_path, os.path.join(outdir, load_path)]
    for run in candidates:
        if os.path.isfile(os.path.join(run, "checkpoint.pt")) and load_step is None:
            return run
        if not os.path.isdir(run):
            continue
        if load_step is not None:
            folder = os.path.join(run, str(load_step))
            if os.path.isfile(os.path.join(folder, "checkpoint.pt")):
                return folder
            raise DataError(f"{folder}/checkpoint.pt not found; pick a saved step with load_step= or omit it")
        steps = sorted(
            int(os.path.basename(os.path.dirname(p)))
            for p in glob.glob(os.path.join(run, "*", "checkpoint.pt"))
            if os.path.basename(os.path.dirname(p)).isdigit()
        )
        if steps:
            return os.path.join(run, str(steps[-1]))
        raise DataError(f"no <step>/checkpoint.pt under {run}; train first or fix load_path=")
    raise DataError(f"load_path={load_path}: neither a folder nor a run under {outdir}/; fix load_path=")


def _resize_parameters(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every parameter/buffer of ``model`` the shape it has in ``state`` (densification changes N).

    Values are overwritten by ``load_state_dict`` afterwards; only shapes matter here.
    """
    for name, value in state.items():
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        current = getattr(module, leaf, None)
        if not isinstance(current, torch.Tensor) or current.shape == value.shape:
            continue
        if isinstance(current, torch.nn.Parameter):
            setattr(module, leaf, torch.nn.Parameter(torch.empty_like(value, device=current.device),
                                                     requires_grad=current.requires_grad))
        else:
            module.register_buffer(leaf, torch.empty_like(value, device=current.device))


class PhaseTimer:
    """Honest per-phase times of a profiling pass: the device is drained (``synchronize``) before
    and after every phase, so each phase's host wall time is its device time plus its launch cost.

    Only for measurement: the synchronizations remove the host/device overlap of a normal step,
    so the sum of the phases exceeds the pipelined step time. ``totals[name]`` are milliseconds
    summed over ``steps`` calls of :meth:`step`.
    """

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.totals: dict[str, float] = defaultdict(float)
        self.step_total = 0.0
        self.steps = 0

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        start = time_module.perf_counter()
        with record_function(name):
            yield
        self._sync()
        self.totals[name] += (time_module.perf_counter() - start) * 1000.0

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Around one whole step: its synchronized time (phases + everything between them)."""
        self._sync()
        start = time_module.perf_counter()
        yield
        self._sync()
        self.step_total += (time_module.perf_counter() - start) * 1000.0
        self.steps += 1

    def per_step(self) -> dict[str, float]:
        """Milliseconds per step of every phase, plus ``other`` (step time outside any phase)."""
        steps = max(1, self.steps)
        result = {name: total / steps for name, total in self.totals.items()}
        result["other"] = max(0.0, self.step_total / steps - sum(result.values()))
        result["step (synchronized)"] = self.step_total / steps
        return result


def timed_phase(timer: Optional[PhaseTimer], name: str):
    """``timer.phase(name)`` in a profiling pass, else a profiler label (no synchronization)."""
    return timer.phase(name) if timer is not None else record_function(name)


@dataclass
class RandomViews:
    """The random views of one step (SPEC 4.2-4.3), drawn before any render.

    Attributes:
        cameras: B orbit cameras; backgrounds: [B, 3]; cond: per sample (view, relative elevation,
        relative azimuth, radius offset); size: render size.
    """

    cameras: list[Camera]
    backgrounds: torch.Tensor
    cond: list[tuple[int, float, float, float]]
    size: int


# ----------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """STAG4D training state and loop.

    Attributes:
        cfg: the validated config (``config_utils``).
        data: the loaded frames (``data_loader.FrameData``).
        model: ``gs_renderer.GaussianModel4D``.
        step: number of completed training steps.
        last_step_time: wall seconds of the last ``train_step`` (host time, no device sync).
    """

    def __init__(self, cfg: DictConfig, guidance: Any = None):
        """
        Args:
            cfg: validated config (``config_utils.load_config``).
            guidance: an object with the ``guidance.Guidance`` interface; None = load the Zero123
                model named by ``cfg.zero123_model`` when ``cfg.lambda_zero123 > 0``.

        Raises:
            errors.UserError: bad data, config or missing diffusion model (before any training).
        """
        from data_loader import load_frames
        from densification import DensifyStrategy
        from gs_renderer import GaussianModel4D, build_optimizer

        self.cfg = cfg
        self.device = resolve_device(str(cfg.device))
        self.backend = str(cfg.backend)
        seed_everything(int(cfg.seed))
        # The trainer's own sampling (frames, views, backgrounds, conditioning) draws from this
        # generator; its state goes into checkpoints so that a resumed run continues identically.
        self.rng = random.Random(int(cfg.seed))

        needs_anchor_images = cfg.lambda_anchor_rgb > 0 or cfg.lambda_anchor_alpha > 0
        self.anchor_table = cam_utils.anchor_table([list(row) for row in cfg.anchor_views])
        self.data = load_frames(
            str(cfg.path),
            ref_size=int(cfg.ref_size),
            anchor_size=int(cfg.anchor_size),
            num_frames=cfg.num_frames,
            require_anchors=needs_anchor_images,
            device=self.device,
            num_anchor_views=len(self.anchor_table),
        )
        self.num_frames = int(self.data.num_frames)
        self._check_data_against_config()
        self.train_frames = [i for i in range(self.num_frames) if i not in set(cfg.holdout_frames)]
        self.train_views = [k for k in range(self._num_anchor_views()) if k not in set(cfg.holdout_views)]
        if not self.train_frames:
            raise UserError(f"holdout_frames={list(cfg.holdout_frames)} holds out every frame; keep at least one")
        self.middle_frame = min(self.train_frames, key=lambda i: (abs(i - self.num_frames // 2), i))

        self.ref_camera = cam_utils.reference_camera(
            float(cfg.elevation), float(cfg.radius), float(cfg.fovy), int(cfg.ref_size), device=self.device
        )
        self.anchor_cams = cam_utils.anchor_cameras(
            float(cfg.elevation), float(cfg.radius), float(cfg.fovy), int(cfg.anchor_size),
            table=self.anchor_table, device=self.device,
        )

        self.guidance = guidance
        if self.guidance is None and cfg.lambda_zero123 > 0:
            self.guidance = self._load_guidance()
        if self.guidance is not None and cfg.lambda_zero123 > 0:
            ref_rgb, anchor_rgb = self._training_images()
            self.guidance.prepare(ref_rgb, anchor_rgb)

        self.model = GaussianModel4D.from_config(cfg).to(self.device)
        self.model.initialize_random(int(cfg.num_pts), float(cfg.init_radius), int(cfg.seed))
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg)
        self.densify = DensifyStrategy(cfg)
        self.step = 0
        self.last_step_time = 0.0
        # set by benchmarks for a profiling pass (synchronized per-phase times); None in training
        self.phase_timer: Optional[PhaseTimer] = None
        self._white = torch.ones(3, device=self.device)
        self._black = torch.zeros(3, device=self.device)
        if cfg.load_path:
            self.load(str(cfg.load_path), cfg.load_step)

    # ------------------------------------------------------------------------------------------
    # set-up

    def _num_anchor_views(self) -> int:
        if self.data.anchor_rgb is None:
            return 0
        return int(self.data.anchor_rgb.shape[1])

    def _check_data_against_config(self) -> None:
        cfg = self.cfg
        bad = [f for f in cfg.holdout_frames if f >= self.num_frames]
        if bad:
            raise UserError(f"holdout_frames={list(cfg.holdout_frames)}: the data has frames 0..{self.num_frames - 1}")
        views = self._num_anchor_views()
        if views and views != len(self.anchor_table):
            raise DataError(
                f"{cfg.path}: zero123/ holds {views} anchor views per frame but anchor_views lists "
                f"{len(self.anchor_table)}; make anchor_views match the data"
            )

    def _load_guidance(self) -> Any:
        from guidance import load_guidance

        try:
            return load_guidance(self.cfg, self.device)
        except ModelUnavailable as err:
            reason = str(err).splitlines()[0] if str(err) else "it cannot be loaded"
            hint = "" if ("zero123_model=" in reason and "anchored.yaml" in reason) else (
                "; point zero123_model= at a local diffusers folder, or train without it: "
                "--config configs/anchored.yaml"
            )
            raise ModelUnavailable(f"lambda_zero123={self.cfg.lambda_zero123} needs Zero123: {reason}{hint}") from err

    def _training_images(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Reference [T, 3, S, S] and anchor [T, V, 3, A, A] images with held-out data blanked (white).

        Blanking (rather than trusting index bookkeeping alone) guarantees held-out frames and
        views cannot leak into the guidance's embeddings.
        """
        ref_rgb = self.data.ref_rgb.clone()
        held_frames = list(self.cfg.holdout_frames)
        if held_frames:
            ref_rgb[held_frames] = 1.0
        anchor_rgb = self.data.anchor_rgb
        if anchor_rgb is not None:
            anchor_rgb = anchor_rgb.clone()
            if held_frames:
                anchor_rgb[held_frames] = 1.0
            if len(self.cfg.holdout_views):
                anchor_rgb[:, list(self.cfg.holdout_views)] = 1.0
        return ref_rgb, anchor_rgb

    # ------------------------------------------------------------------------------------------
    # one step

    def frame_time(self, frame: int) -> float:
        """Normalized time of a frame: t = i / T."""
        return frame / self.num_frames

    def _sample_frames(self, coarse: bool) -> list[int]:
        if coarse:
            return [self.middle_frame] * int(self.cfg.batch_size)
        return [self.train_frames[self.rng.randrange(len(self.train_frames))] for _ in range(int(self.cfg.batch_size))]

    def _random_view(self, size: int, time: float, device: Optional[torch.device] = None
                     ) -> tuple[Camera, float, float, float]:
        """A random orbit camera (SPEC 4.2): (camera, elevation offset, azimuth, radius offset)."""
        from guidance.conditioning import sample_random_view

        d_elevation, azimuth = sample_random_view(self.rng, float(self.cfg.elevation))
        camera = cam_utils.Camera.orbit(
            float(self.cfg.elevation) + d_elevation, azimuth, float(self.cfg.radius), float(self.cfg.fovy),
            size, time, device=self.device if device is None else device,
        )
        return camera, float(d_elevation), float(azimuth), 0.0

    def _condition(self, azimuth: float, d_elevation: float) -> tuple[int, float, float]:
        """SDS conditioning (SPEC 4.3): (view, relative elevation, relative azimuth); view -1 = reference."""
        from guidance.conditioning import choose_condition_view

        if not self.train_views:
            return -1, d_elevation, azimuth
        view, rel_elevation, rel_azimuth = choose_condition_view(azimuth, d_elevation, self.anchor_table, self.rng)
        if view >= 0 and view not in self.train_views:
            return -1, d_elevation, azimuth  # a held-out anchor is never shown to the guidance
        return int(view), float(rel_elevation), float(rel_azimuth)

    def _render_many(self, gaussians: list[GaussianParams], cameras: list[Camera],
                     backgrounds: torch.Tensor) -> list[RenderOutput]:
        from rasterizer.render import render_batch

        return render_batch(gaussians, cameras, backgrounds, backend=self.backend)

    def train_step(self) -> dict[str, Any]:
        """One training step (SPEC section 4): renders, losses, Adam step, LR update, densification.

        Returns:
            detached losses (0-dim tensors, no host sync) and ``num_gaussians``, ``step`` (ints).
        """
        start = time_module.perf_counter()
        cfg = self.cfg
        self.step += 1
        step = self.step
        ratio = step_ratio(step, int(cfg.iters))
        coarse = step <= int(cfg.init_steps)
        self.model.train()
        self.scheduler.step(step)

        frames = self._sample_frames(coarse)
        times = [self.frame_time(i) for i in frames]
        timer = self.phase_timer
        with timed_phase(timer, "deformation"):
            if coarse:  # deformation not applied: the canonical Gaussians serve every sample
                canonical = self.model.gaussians_at(None)
                gaussians = [canonical] * len(frames)
            else:  # one deformation call for the batch
                times_in = self._host_to_device(times, torch.float32) if cfg.async_host_inputs else times
                gaussians = self.model.gaussians_at_times(times_in)
        losses: dict[str, torch.Tensor] = {}
        outputs: list[RenderOutput] = []

        # The random views are drawn first (the reference render draws nothing from self.rng, so
        # the draws are the same as drawing them after it) so both renders can be one call.
        use_ref = cfg.lambda_ref_rgb > 0 or cfg.lambda_ref_alpha > 0
        use_sds = self.guidance is not None and cfg.lambda_zero123 > 0
        views = self._draw_random_views(times, ratio) if use_sds else None
        ref_cameras = [self.ref_camera.with_time(t) for t in times]
        ref_backgrounds = self._white.expand(len(frames), 3)
        ref_out: list[RenderOutput] = []
        rand_out: list[RenderOutput] = []
        if use_ref and views is not None and cfg.fuse_renders and views.size == int(cfg.ref_size):
            with timed_phase(timer, "render (reference + random, one call)"):
                both = self._render_many(gaussians + gaussians, ref_cameras + views.cameras,
                                         torch.cat([ref_backgrounds, views.backgrounds]))
            ref_out, rand_out = both[: len(frames)], both[len(frames):]
        else:
            if use_ref:
                with timed_phase(timer, "render_reference"):
                    ref_out = self._render_many(gaussians, ref_cameras, ref_backgrounds)
            if views is not None:
                with timed_phase(timer, "render_random"):
                    rand_out = self._render_many(gaussians, views.cameras, views.backgrounds)

        # 1. reference view, white background
        if use_ref:
            outputs += ref_out
            # sum over samples of the per-sample MSE, as the released loop adds one loss per sample
            if cfg.lambda_ref_rgb > 0:
                ref_images = torch.stack([o.image for o in ref_out])
                losses["ref_rgb"] = ratio * cfg.lambda_ref_rgb * _per_sample_mse(ref_images, self._stack(self.data.ref_rgb, frames))
            if cfg.lambda_ref_alpha > 0:
                ref_alphas = torch.stack([o.alpha for o in ref_out])
                losses["ref_alpha"] = ratio * cfg.lambda_ref_alpha * _per_sample_mse(
                    ref_alphas, self._stack(self.data.ref_mask, frames)
                )

        # 2-3. random view + SDS
        if views is not None:
            outputs += rand_out
            losses["sds"] = cfg.lambda_zero123 * self._sds_loss(rand_out, views, frames, step)

        # ours: anchor views at their poses
        if (cfg.lambda_anchor_rgb > 0 or cfg.lambda_anchor_alpha > 0) and self.train_views:
            with timed_phase(timer, "render_anchor"):
                anchor_rgb, anchor_alpha = self._anchor_losses(gaussians, frames, times, outputs)
            if cfg.lambda_anchor_rgb > 0:
                losses["anchor_rgb"] = ratio * cfg.lambda_anchor_rgb * anchor_rgb
            if cfg.lambda_anchor_alpha > 0:
                losses["anchor_alpha"] = ratio * cfg.lambda_anchor_alpha * anchor_alpha

        # 4. HexPlane regularizers (fine stage), 5. anisotropy of the last sample's scales
        with timed_phase(timer, "regularizers"):
            if not coarse and cfg.lambda_tv > 0:
                losses["regularizer"] = self._regularizer()  # includes lambda_tv
            if cfg.lambda_anisotropy > 0:
                from losses import anisotropy_loss

                losses["anisotropy"] = cfg.lambda_anisotropy * anisotropy_loss(
                    gaussians[-1].log_scales, float(cfg.scale_loss_ratio), activated=bool(cfg.anisotropy_activated)
                )

        total = torch.stack(list(losses.values())).sum()
        with timed_phase(timer, "backward"):
            total.backward()
        with timed_phase(timer, "optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        with timed_phase(timer, "densification"):
            self.densify.accumulate(outputs, step)
            self.densify.step(self.model, self.optimizer, step)

        self.last_step_time = time_module.perf_counter() - start
        result: dict[str, Any] = {k: v.detach() for k, v in losses.items()}
        result["loss"] = total.detach()
        result["num_gaussians"] = int(self.model.num)
        result["step"] = step
        return result

    def _draw_random_views(self, times: list[float], ratio: float) -> RandomViews:
        """Per sample: random camera, background (inverted with ``invert_bg_prob``), conditioning.

        With ``async_host_inputs`` the cameras are built on the host and their matrices reach the
        device in one pinned non-blocking copy: building each on the device would copy from
        pageable memory, which makes the host wait for all queued GPU work (a sync per camera).
        """
        cfg = self.cfg
        size = random_view_size(ratio, list(cfg.render_res_ratios), list(cfg.render_res_sizes))
        on_host = bool(cfg.async_host_inputs) and self.device.type == "cuda"
        cameras, backgrounds, cond = [], [], []
        for t in times:
            camera, d_elevation, azimuth, d_radius = self._random_view(size, t, torch.device("cpu") if on_host else None)
            invert = self.rng.random() < float(cfg.invert_bg_prob)
            cameras.append(camera)
            backgrounds.append(self._black if invert else self._white)
            view, rel_elevation, rel_azimuth = self._condition(azimuth, d_elevation)
            cond.append((view, rel_elevation, rel_azimuth, d_radius))
        if on_host:
            matrices = torch.stack([c.world_to_camera for c in cameras]).pin_memory()
            matrices = matrices.to(self.device, non_blocking=True)
            cameras = [replace(c, world_to_camera=matrices[i]) for i, c in enumerate(cameras)]
        return RandomViews(cameras, torch.stack(backgrounds), cond, size)

    def _sds_loss(self, rand_out: list[RenderOutput], views: RandomViews, frames: list[int], step: int) -> torch.Tensor:
        """SDS of the random-view renders (one batched guidance call)."""
        images = torch.stack([o.image for o in rand_out])
        cond = views.cond
        return self.guidance.sds_loss(
            images,
            self._host_to_device(frames, torch.long),
            self._host_to_device([c[0] for c in cond], torch.long),
            self._host_to_device([c[1] for c in cond], torch.float32),
            self._host_to_device([c[2] for c in cond], torch.float32),
            self._host_to_device([c[3] for c in cond], torch.float32),
            step,
        )

    def _host_to_device(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        """Small host list -> device tensor without a stream sync (pinned, non-blocking copy)."""
        pinned = self.device.type == "cuda"
        return torch.tensor(values, dtype=dtype, pin_memory=pinned).to(self.device, non_blocking=True)

    @staticmethod
    def _stack(images: torch.Tensor, frames: list[int]) -> torch.Tensor:
        """images[frames] by integer views (no index tensor copied to the device): [B, ...]."""
        return torch.stack([images[i] for i in frames])

    def _anchor_losses(self, gaussians: list[GaussianParams], frames: list[int], times: list[float],
                       outputs: list[RenderOutput]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum over samples (and their chosen anchors) of the anchor-view RGB and alpha MSEs."""
        per_sample = int(self.cfg.anchors_per_sample) or len(self.train_views)
        per_sample = min(per_sample, len(self.train_views))
        sample_gaussians, cameras, targets_rgb, targets_mask = [], [], [], []
        for g, frame, t in zip(gaussians, frames, times):
            for view in self.rng.sample(self.train_views, per_sample):
                sample_gaussians.append(g)
                cameras.append(self.anchor_cams[view].with_time(t))
                targets_rgb.append(self.data.anchor_rgb[frame, view])
                targets_mask.append(self.data.anchor_mask[frame, view])
        out = self._render_many(sample_gaussians, cameras, self._white.expand(len(cameras), 3))
        outputs += out
        images = torch.stack([o.image for o in out])
        alphas = torch.stack([o.alpha for o in out])
        # normalize by anchors per sample so the weight means the same with 1 or all anchors
        rgb = _per_sample_mse(images, torch.stack(targets_rgb)) / per_sample
        alpha = _per_sample_mse(alphas, torch.stack(targets_mask)) / per_sample
        return rgb, alpha

    def _regularizer(self) -> torch.Tensor:
        """lambda_tv * weighted HexPlane terms (SPEC 4.4)."""
        from losses import hexplane_regularizers, total_regularizer

        return total_regularizer(hexplane_regularizers(self.model.deformation), self.cfg)

    # ------------------------------------------------------------------------------------------
    # loop

    def train(self, iters: Optional[int] = None) -> None:
        """Train ``iters`` more steps (None = up to ``total_steps``), validating and saving on schedule."""
        from tqdm import tqdm

        cfg = self.cfg
        end = int(cfg.total_steps) if iters is None else self.step + int(iters)
        if self.step >= end:
            return
        sums: dict[str, torch.Tensor] = {}
        count = 0
        bar = tqdm(total=end - self.step, desc=str(cfg.save_path), dynamic_ncols=True)
        try:
            while self.step < end:
                result = self.train_step()
                for key, value in result.items():
                    if isinstance(value, torch.Tensor):
                        sums[key] = sums[key] + value if key in sums else value
                count += 1
                bar.update(1)
                if count >= int(cfg.log_interval) or self.step == end:
                    # one host sync per log interval
                    means = {k: float(v) / count for k, v in sums.items()}
                    self._log(means, result["num_gaussians"])
                    bar.set_postfix(step=self.step, n=result["num_gaussians"],
                                    **{k: f"{v:.4g}" for k, v in means.items()})
                    sums, count = {}, 0
                if cfg.valid_interval and self.step % int(cfg.valid_interval) == 0:
                    self.validate(self.step)
                if cfg.save_step and self.step % int(cfg.save_step) == 0:
                    self.save(self.step)
        finally:
            bar.close()
        if not (cfg.save_step and self.step % int(cfg.save_step) == 0):
            self.save(self.step)

    def _log(self, means: dict[str, float], num_gaussians: int) -> None:
        """Append the mean losses of the last interval to ``<outdir>/<save_path>/losses.csv``."""
        folder = self.run_folder
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "losses.csv")
        keys = sorted(means)
        header = not os.path.exists(path)
        with open(path, "a") as f:
            if header:
                f.write(",".join(["step", "num_gaussians"] + keys) + "\n")
            f.write(",".join([str(self.step), str(num_gaussians)] + [f"{means[k]:.6g}" for k in keys]) + "\n")

    # ------------------------------------------------------------------------------------------
    # rendering and outputs

    @property
    def run_folder(self) -> str:
        return os.path.join(str(self.cfg.outdir), str(self.cfg.save_path))

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
        from rasterizer.render import render as rasterize

        gaussians = self.model.gaussians_at(time)
        if time is not None:
            camera = camera.with_time(float(time))
        bg = torch.tensor([float(c) for c in background], device=self.device)
        return rasterize(gaussians, camera.to(self.device), bg, backend=self.backend, scale_modifier=scale_modifier)

    @torch.no_grad()
    def validate(self, step: int) -> list[str]:
        """Front (azimuth 0) and back (180) renders of every frame: NN.jpg and video.mp4 per view.

        Returns:
            the folders written, ``<valid_dir>/<save_path>/<step>_<front|back>``.
        """
        cfg = self.cfg
        folders = []
        for name, azimuth in (("front", 0.0), ("back", 180.0)):
            folder = os.path.join(str(cfg.valid_dir), str(cfg.save_path), f"{step}_{name}")
            camera = cam_utils.Camera.orbit(float(cfg.elevation), azimuth, float(cfg.radius), float(cfg.fovy),
                                            int(cfg.ref_size), device=self.device)
            frames = []
            for i in range(self.num_frames):
                image = to_uint8(self.render(camera, self.frame_time(i)).image)
                io_utils.save_image(os.path.join(folder, f"{i:02d}.jpg"), image)
                frames.append(image)
            write_video(os.path.join(folder, "video.mp4"), frames, fps=int(cfg.video_fps))
            folders.append(folder)
        return folders

    def save(self, step: Optional[int] = None) -> str:
        """Write ``<outdir>/<save_path>/<step>/``: model.ply, deformation.pt, config.yaml, frames/, and
        last (atomically) checkpoint.pt, whose presence marks the folder as complete.
        """
        step = self.step if step is None else int(step)
        folder = os.path.join(self.run_folder, str(step))
        os.makedirs(folder, exist_ok=True)
        self.model.save(folder)
        io_utils.write_text(os.path.join(folder, "config.yaml"), config_utils.to_yaml(self.cfg))
        if self.cfg.export_frames:
            with torch.no_grad():
                for i in range(self.num_frames):
                    self.model.export_frame_ply(os.path.join(folder, "frames", f"{i}.ply"), self.frame_time(i))
        io_utils.torch_save(self.checkpoint_state(), os.path.join(folder, "checkpoint.pt"))
        return folder

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "densify": self.densify.state_dict(),
            "rng": rng_state(self.rng),
            "config": config_utils.to_container(self.cfg),
        }

    def load(self, load_path: str, load_step: Optional[int] = None) -> str:
        """Resume from ``<outdir>/<load_path>/<load_step>/checkpoint.pt`` (latest step when None).

        Restores parameters (any Gaussian count), optimizer state, densification statistics, the
        step and every random state; the current config is kept.

        Returns:
            the folder loaded.
        """
        from gs_renderer import build_optimizer

        folder = checkpoint_folder(str(self.cfg.outdir), load_path, load_step)
        path = os.path.join(folder, "checkpoint.pt")
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as err:
            raise DataError(f"{path} cannot be read ({type(err).__name__}); pick another load_step=") from err
        if state.get("format") != CHECKPOINT_FORMAT:
            raise DataError(f"{path} has checkpoint format {state.get('format')}, expected {CHECKPOINT_FORMAT}")
        _resize_parameters(self.model, state["model"])
        self.model.load_state_dict(state["model"])
        self.optimizer, self.scheduler = build_optimizer(self.model, self.cfg)
        self.optimizer.load_state_dict(state["optimizer"])
        self.densify.load_state_dict(state["densify"])
        set_rng_state(self.rng, state["rng"])
        self.step = int(state["step"])
        return folder


def _per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of per-sample mean squared errors: [B, C, H, W] x2 -> scalar."""
    return (prediction - target).square().flatten(1).mean(dim=1).sum()


__all__ = ["PhaseTimer", "Trainer", "checkpoint_folder", "random_view_size", "resolve_device", "step_ratio"]
