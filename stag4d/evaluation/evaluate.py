"""Score a trained model against the images of its dataset, or render it at given views.

    python scripts/evaluate.py --config configs/stag4d.yaml path=dataset/NAME save_path=NAME \\
        [load_step=N] [views=all|reference|anchors|eval] [frames=[0,8,16]] \\
        [metrics=[psnr,ssim,iou,clip,lpips,fvd,fid_vid]] \\
        [clip_model=ID|DIR] [lpips_vgg=FILE] [lpips_lin=FILE] [i3d=FILE] [inception=FILE]
    python scripts/evaluate.py --config configs/stag4d.yaml path=dataset/NAME save_path=NAME \\
        render_views=views.json out=DIR [size=512]

Score mode: loads ``<outdir>/<save_path>/<step>/`` (``GaussianModel4D.load``; the latest saved step
unless ``load_step``), renders every chosen view at every chosen frame i at time t = i / T on a
white background, and compares with the dataset's images (composited on white):

* ``reference``: the input camera (azimuth 0, the config's elevation) against ``ref/``;
* ``anchors``: the anchor cameras (``anchor_views`` table, relative to ``elevation``) against
  ``zero123/`` at ``anchor_size``;
* ``eval``: the held-out views of ``eval/views.json`` against ``eval/<name>/<i>_rgba.png``.

``views=all`` (default) takes every group the dataset has. It prints one row per group (the mean
over views and frames) and writes everything (per view and per frame too) to
``<valid_dir>/<save_path>/metrics_<step>.json``.

Render mode (``render_views=FILE out=DIR``): renders each view of FILE (the format of
``eval/views.json``: ``{"views": [{"name", "elevation", "azimuth"}, ...]}``, elevation absolute)
at every frame into ``DIR/<name>/<i>.png`` (RGB on white), e.g. to score against the four views of
each Consistent4D test object with its own evaluation scripts.

Everything after ``--config`` is a dotted override: the keys above belong to this script, the
others go to the run config (:mod:`stag4d.config`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from cam_utils import Camera, CameraConfig
from stag4d.config import RunConfig, load_config, split_script_overrides
from stag4d.data.frames import FrameData, load_frames, load_image
from stag4d.device import resolve_device
from stag4d.errors import DataError, ModelUnavailable, UserError, exit_on_user_error
from stag4d.evaluation import metrics
from stag4d.evaluation.saved_model import SavedModel, open_saved_model
from stag4d.evaluation.visualize import iter_track_frames
from stag4d.files import save_image, write_text
from stag4d.rasterizer import render
from stag4d.training.runs import check_run_name

VIEW_GROUPS = ("reference", "anchors", "eval")
IMAGE_METRICS = ("psnr", "ssim", "iou", "clip", "lpips")
VIDEO_METRICS = ("fvd", "fid_vid")
DEFAULT_METRICS = ("psnr", "ssim", "iou")
# Higher is better for these; lower for the rest (printed in the table header).
HIGHER_IS_BETTER = {"psnr", "ssim", "iou", "clip"}


@dataclass
class EvalOptions:
    """Settings of this script (the ``key=value`` overrides that are not run-config keys)."""

    load_step: Optional[int] = None
    views: str = "all"
    frames: Optional[list[int]] = None
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    render_views: Optional[str] = None
    out: Optional[str] = None
    size: Optional[int] = None
    clip_model: str = "openai/clip-vit-base-patch32"
    lpips_vgg: Optional[str] = None
    lpips_lin: Optional[str] = None
    i3d: Optional[str] = None
    inception: Optional[str] = None
    smoothness: bool = True  # the temporal smoothness figures at the reference view (see temporal_smoothness)


EVAL_KEYS = tuple(EvalOptions.__dataclass_fields__)


@dataclass
class ViewSpec:
    name: str
    elevation: float
    azimuth: float


@dataclass
class ViewGroup:
    """Cameras of one group and where their ground truth comes from.

    ``ground_truth(view_index, frame_position)`` -> (rgb [3, S, S] on white, alpha [1, S, S]).
    """

    name: str
    view_names: list[str]
    cameras: list[Camera]
    ground_truth: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], EvalOptions]:
    """(run-config overrides, this script's options) from ``key=value`` items."""
    config_items, own = split_script_overrides(overrides, EVAL_KEYS, example="save_path=run1 or views=eval")
    opts = EvalOptions()
    for key, value in own.items():
        setattr(opts, key, value)
    _check_options(opts)
    return config_items, opts


def _check_options(opts: EvalOptions) -> None:
    if isinstance(opts.metrics, str):
        opts.metrics = [opts.metrics]
    unknown = [m for m in opts.metrics if m not in IMAGE_METRICS + VIDEO_METRICS]
    if unknown:
        raise UserError(f"metrics={unknown}: choose from {', '.join(IMAGE_METRICS + VIDEO_METRICS)}")
    if opts.views not in VIEW_GROUPS + ("all",):
        raise UserError(f"views={opts.views}: use all, reference, anchors or eval")
    if opts.frames is not None:
        if isinstance(opts.frames, int):
            opts.frames = [opts.frames]
        if not all(isinstance(f, int) for f in opts.frames):
            raise UserError(f"frames={opts.frames}: give frame indices, e.g. frames=[0,8,16]")
    if (opts.render_views is None) != (opts.out is None):
        raise UserError("render_views=FILE and out=DIR go together: give both")
    if opts.size is not None and int(opts.size) < 1:
        raise UserError(f"size={opts.size} must be at least 1")
    if opts.load_step is not None and not isinstance(opts.load_step, int):
        raise UserError(f"load_step={opts.load_step}: give a step number")


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[str, list[str]]:
    parser = argparse.ArgumentParser(
        description="Score a trained STAG4D model (PSNR, SSIM, mask IoU, ...) or render it at given views.",
        epilog="example: python scripts/evaluate.py --config configs/stag4d.yaml path=dataset/minions "
               "save_path=minions views=eval metrics=[psnr,ssim,iou]",
    )
    parser.add_argument("--config", default="configs/stag4d.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"run-config overrides, or this script's keys: {', '.join(EVAL_KEYS)}")
    args = parser.parse_args(argv)
    return args.config, list(args.overrides)


# --------------------------------------------------------------------------------------------
# Model, views and ground truth
# --------------------------------------------------------------------------------------------


def load_views_json(file: str) -> list[ViewSpec]:
    """Views of a views.json file: ``{"views": [{"name", "elevation", "azimuth"}, ...]}``."""
    try:
        with open(file) as f:
            data = json.load(f)
        views = [ViewSpec(str(v["name"]), float(v["elevation"]), float(v["azimuth"])) for v in data["views"]]
    except FileNotFoundError:
        raise DataError(f"{file} not found: give a views file like eval/views.json") from None
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{file} is not a views file ({type(err).__name__}: {err}): expected "
            '{"views": [{"name": "az060_el-15", "elevation": -15, "azimuth": 60}, ...]}'
        ) from None
    if not views:
        raise DataError(f"{file} lists no views: add at least one {{name, elevation, azimuth}}")
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise DataError(f"{file}: view names must be unique, got {names}")
    for view in views:
        try:
            check_run_name(view.name, "view name")  # a folder name under out= (no '/', '..')
        except UserError:
            raise DataError(f"{file}: view name {view.name!r} is not a folder name: use letters, digits and "
                            "_ . + -") from None
        if not (math.isfinite(view.elevation) and -90.0 < view.elevation < 90.0 and math.isfinite(view.azimuth)):
            raise DataError(f"{file}: view {view.name!r} has elevation {view.elevation} and azimuth {view.azimuth}; "
                            "give finite degrees with elevation in (-90, 90)")
    return views


def orbit_cameras(views: Sequence[ViewSpec], camera: CameraConfig, size: int, device) -> list[Camera]:
    """Cameras at the views' absolute elevations and azimuths on the run's orbit."""
    return [Camera.orbit(v.elevation, v.azimuth, camera.radius, camera.fovy, size, device=device) for v in views]


def build_view_groups(cfg: RunConfig, opts: EvalOptions, data: FrameData, device) -> list[ViewGroup]:
    """The view groups asked for (``views=all``: every group the dataset has ground truth for)."""
    wanted = VIEW_GROUPS if opts.views == "all" else (opts.views,)
    groups: list[ViewGroup] = []
    ref_size, anchor_size = cfg.data.ref_size, cfg.data.anchor_size

    if "reference" in wanted:
        camera = cfg.camera.reference(ref_size, device=device)
        groups.append(ViewGroup("reference", ["reference"], [camera],
                                lambda v, f: (data.ref_rgb[f], data.ref_mask[f])))

    if "anchors" in wanted:
        if data.anchor_rgb is None:
            if opts.views == "anchors":
                raise DataError(f"{os.path.join(data.path, 'zero123')} is missing: make the anchors with "
                                "scripts/gen_mv.py or choose views=reference|eval")
        else:
            cameras = cfg.camera.anchors(anchor_size, device=device)
            if len(cameras) != data.anchor_rgb.shape[1]:
                raise DataError(f"anchor_views has {len(cameras)} rows but the dataset has "
                                f"{data.anchor_rgb.shape[1]} anchor views: fix anchor_views")
            groups.append(ViewGroup("anchors", [f"anchor{k}" for k in range(len(cameras))], cameras,
                                    lambda v, f: (data.anchor_rgb[f, v], data.anchor_mask[f, v])))

    if "eval" in wanted:
        views_file = os.path.join(data.path, "eval", "views.json")
        if not os.path.isfile(views_file):
            if opts.views == "eval":
                raise DataError(f"{views_file} not found: add held-out views (eval/views.json and "
                                "eval/<name>/<i>_rgba.png) or choose views=reference|anchors")
        else:
            views = load_views_json(views_file)
            folder = os.path.dirname(views_file)

            def eval_truth(v: int, f: int, views=views, folder=folder):
                file = os.path.join(folder, views[v].name, f"{data.frame_ids[f]}_rgba.png")
                return load_image(file, ref_size)

            groups.append(ViewGroup("eval", [v.name for v in views], orbit_cameras(views, cfg.camera, ref_size, device),
                                    eval_truth))
    if not groups:
        raise DataError(f"{data.path} has no ground truth for views={opts.views}: use views=reference")
    return groups


def choose_frames(frames: Optional[list[int]], num_frames: int) -> list[int]:
    """Positions 0..T-1 to evaluate (all by default)."""
    if frames is None:
        return list(range(num_frames))
    bad = [f for f in frames if not 0 <= f < num_frames]
    if bad:
        raise UserError(f"frames={frames}: the data has frames 0..{num_frames - 1}")
    return list(frames)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


class MetricSuite:
    """The chosen metrics; weight-backed ones are loaded once, up front (fail before rendering)."""

    def __init__(self, names: Sequence[str], opts: EvalOptions, device):
        self.names = list(names)
        self.image_names = [n for n in self.names if n in IMAGE_METRICS]
        self.video_names = [n for n in self.names if n in VIDEO_METRICS]
        self.clip = metrics.CLIPSimilarity.load(opts.clip_model, device) if "clip" in names else None
        self.lpips = metrics.LPIPSVGG.load(opts.lpips_vgg, opts.lpips_lin, device) if "lpips" in names else None
        if "fvd" in names:
            if not opts.i3d:
                raise ModelUnavailable("metrics=fvd needs the I3D TorchScript file: add i3d=PATH/i3d_torchscript.pt")
            self.fvd = metrics.FVD.load(opts.i3d, device)
        if "fid_vid" in names:
            if not opts.inception:
                raise ModelUnavailable("metrics=fid_vid needs an Inception TorchScript file: add "
                                               "inception=PATH/inception-2015-12-05.pt")
            self.fid_vid = metrics.FIDVID.load(opts.inception, device)

    def image(self, pred_rgb, gt_rgb, pred_alpha, gt_alpha) -> dict[str, float]:
        """Image metrics of one view at one frame (all [C, S, S] on the CPU)."""
        out = {}
        for name in self.image_names:
            if name == "psnr":
                out[name] = float(metrics.psnr(pred_rgb, gt_rgb))
            elif name == "ssim":
                out[name] = float(metrics.ssim(pred_rgb, gt_rgb))
            elif name == "iou":
                out[name] = float(metrics.mask_iou(pred_alpha, gt_alpha))
            elif name == "clip":
                out[name] = float(self.clip(pred_rgb, gt_rgb))
            elif name == "lpips":
                out[name] = float(self.lpips(pred_rgb, gt_rgb))
        return out

    def video(self, pred_videos: list[torch.Tensor], gt_videos: list[torch.Tensor]) -> dict[str, Any]:
        """Video metrics of one group (one video [T, 3, S, S] per view); None where not computable."""
        out: dict[str, Any] = {}
        if "fvd" in self.video_names:
            try:
                out["fvd"] = self.fvd(pred_videos, gt_videos)
            except ValueError as err:
                print(f"note: fvd skipped ({err})")
                out["fvd"] = None
        if "fid_vid" in self.video_names:
            if len(pred_videos) < 2:
                print("note: fid_vid skipped for a group with one view (needs 2 or more views)")
                out["fid_vid"] = None
            else:
                out["fid_vid"] = self.fid_vid(pred_videos, gt_videos)
        return out


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


# --------------------------------------------------------------------------------------------
# Rendering and the two modes
# --------------------------------------------------------------------------------------------


def render_view(gaussians, camera: Camera, time: float, background: torch.Tensor, backend: str):
    """(image [3, S, S], alpha [1, S, S]) on the CPU."""
    out = render(gaussians, camera.with_time(time), background, backend=backend)
    return out.image.detach().clamp(0, 1).cpu(), out.alpha.detach().clamp(0, 1).cpu()


def load_settings(config_path: str, overrides: Sequence[str]) -> tuple[RunConfig, EvalOptions]:
    config_items, opts = split_overrides(overrides)
    return load_config(config_path, config_items), opts


@torch.no_grad()
def evaluate(cfg: RunConfig, opts: EvalOptions, saved: SavedModel, device) -> dict[str, Any]:
    """Score the model; returns the result dict (also written as JSON)."""
    suite = MetricSuite(opts.metrics, opts, device)
    data = load_frames(cfg.data.path, cfg.data.ref_size, cfg.data.anchor_size, saved.num_frames,
                       require_anchors=False, device="cpu", num_anchor_views=len(cfg.camera.anchor_views))
    groups = build_view_groups(cfg, opts, data, device)
    positions = choose_frames(opts.frames, data.num_frames)
    white = torch.ones(3, device=device)
    keep_videos = bool(suite.video_names)
    model, backend = saved.model, cfg.train.backend

    # per_frame[group][view][metric] -> list over positions; videos[group] -> (pred, gt) frame lists per view
    per_frame = {g.name: {v: {m: [] for m in suite.image_names} for v in g.view_names} for g in groups}
    videos = {g.name: ([[] for _ in g.view_names], [[] for _ in g.view_names]) for g in groups}
    for position in tqdm(positions, desc="evaluating", unit="frame"):
        time = position / data.num_frames  # t = i / T, as in training
        gaussians = model.gaussians_at(time)  # one deformation per frame for every view
        for group in groups:
            for v, (view_name, camera) in enumerate(zip(group.view_names, group.cameras)):
                pred_rgb, pred_alpha = render_view(gaussians, camera, time, white, backend)
                gt_rgb, gt_alpha = group.ground_truth(v, position)
                gt_rgb, gt_alpha = gt_rgb.cpu(), gt_alpha.cpu()
                for name, value in suite.image(pred_rgb, gt_rgb, pred_alpha, gt_alpha).items():
                    per_frame[group.name][view_name][name].append(value)
                if keep_videos:
                    videos[group.name][0][v].append(pred_rgb)
                    videos[group.name][1][v].append(gt_rgb)

    held_out = set((saved.trained or cfg).data.holdout_frames)  # the frames the run never trained on
    result: dict[str, Any] = {
        "model": saved.folder, "step": saved.step, "dataset": cfg.data.path,
        "frames": [data.frame_ids[p] for p in positions], "metrics": list(suite.names), "groups": {},
        "held_out_frames": sorted(held_out & set(positions)),
    }
    for group in groups:
        views = {}
        for view_name in group.view_names:
            values = per_frame[group.name][view_name]
            views[view_name] = {"mean": {m: _mean(values[m]) for m in suite.image_names}, "per_frame": values}
        mean = {m: _mean([x for view in per_frame[group.name].values() for x in view[m]]) for m in suite.image_names}
        if keep_videos:
            pred_videos = [torch.stack(frames) for frames in videos[group.name][0]]
            gt_videos = [torch.stack(frames) for frames in videos[group.name][1]]
            mean.update(suite.video(pred_videos, gt_videos))
        entry = {"mean": mean, "views": views}
        if result["held_out_frames"]:
            for part, keep in (("trained_frames", lambda p: p not in held_out), ("held_out_frames", lambda p: p in held_out)):
                entry[part] = {m: _mean([x for view in per_frame[group.name].values()
                                         for p, x in zip(positions, view[m]) if keep(p)]) for m in suite.image_names}
        result["groups"][group.name] = entry
    if opts.smoothness and data.num_frames > 2:
        result["temporal_smoothness"] = temporal_smoothness(model, cfg.camera.reference(cfg.data.ref_size, device=device),
                                                            data.num_frames, backend)
    return result


@torch.no_grad()
def temporal_smoothness(model, camera: Camera, num_frames: int, backend: str = "auto") -> dict[str, float]:
    """How smoothly the model moves between frames, at one camera (no ground truth needed).

    Renders r_k at the 2T - 1 times k / (2T): the T - 1 gaps between training frames each get
    their midpoint. Then

    * ``midpoint_psnr``: PSNR of each midpoint render against the mean of its two neighbours,
      averaged: high when the in-between frame lies between its neighbours, low when it pops to
      something else (a frame the model never saw going its own way);
    * ``jitter``: mean |r_{k+1} - 2 r_k + r_{k-1}| / mean |r_{k+1} - r_k| over the sequence, the
      flow-free size of the video's acceleration against its velocity: about 0 for steady motion,
      up to 2 when consecutive renders flicker back and forth.
    """
    times = [k / (2 * num_frames) for k in range(2 * num_frames - 1)]
    chunks = iter_track_frames(model, {"smoothness": [camera] * len(times)}, times, backend=backend, progress=False)
    renders = torch.cat([image for _, image, _, _ in chunks]).clamp(0, 1)
    midpoints = [float(metrics.psnr(renders[k], (renders[k - 1] + renders[k + 1]) / 2))
                 for k in range(1, len(times), 2)]
    velocity = (renders[1:] - renders[:-1]).abs().mean()
    acceleration = (renders[2:] - 2 * renders[1:-1] + renders[:-2]).abs().mean()
    return {"midpoint_psnr": _mean([min(m, 100.0) for m in midpoints]),
            "jitter": float(acceleration / velocity.clamp_min(1e-12))}


def format_table(result: dict[str, Any]) -> str:
    """One row per view group: the means over its views and frames."""
    names = result["metrics"]
    header = f"{'views':<10} {'n':>3}  " + "  ".join(
        f"{n + ('↑' if n in HIGHER_IS_BETTER else '↓'):>9}" for n in names)
    lines = [header, "-" * len(header)]
    for group, entry in result["groups"].items():
        cells = []
        for n in names:
            value = entry["mean"].get(n)
            cells.append(f"{'-':>9}" if value is None or (isinstance(value, float) and math.isnan(value))
                         else f"{value:>9.4f}")
        lines.append(f"{group:<10} {len(entry['views']):>3}  " + "  ".join(cells))
        for part, label in (("trained_frames", " trained"), ("held_out_frames", " held-out")):
            if part in entry:
                cells = [f"{entry[part].get(n, float('nan')):>9.4f}" if n in entry[part] else f"{'-':>9}" for n in names]
                lines.append(f"{label:<10} {'':>3}  " + "  ".join(cells))
    if "temporal_smoothness" in result:
        smooth = result["temporal_smoothness"]
        lines.append(f"temporal smoothness (reference view): midpoint PSNR {smooth['midpoint_psnr']:.2f} dB, "
                     f"jitter {smooth['jitter']:.3f}")
    return "\n".join(lines)


def metrics_path(cfg: RunConfig, step: int) -> str:
    return os.path.join(cfg.output.valid_dir, cfg.output.save_path, f"metrics_{step}.json")


@torch.no_grad()
def render_views(cfg: RunConfig, opts: EvalOptions, saved: SavedModel, device) -> list[str]:
    """Render every view of ``opts.render_views`` at every frame into ``opts.out/<name>/<i>.png``."""
    views = load_views_json(str(opts.render_views))
    size = opts.size or cfg.data.ref_size
    num_frames = saved.num_frames
    positions = choose_frames(opts.frames, num_frames)
    cameras = orbit_cameras(views, cfg.camera, size, device)
    white = torch.ones(3, device=device)
    folders = [os.path.join(str(opts.out), v.name) for v in views]
    for position in tqdm(positions, desc="rendering", unit="frame"):
        time = position / num_frames
        gaussians = saved.model.gaussians_at(time)
        for folder, camera in zip(folders, cameras):
            image, _ = render_view(gaussians, camera, time, white, cfg.train.backend)
            pixels = (image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
            save_image(os.path.join(folder, f"{position}.png"), pixels)
    return folders


@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> None:
    config_path, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    cfg, opts = load_settings(config_path, overrides)
    device = resolve_device(cfg.train.device)
    saved = open_saved_model(cfg, opts.load_step, device)
    if opts.render_views is not None:
        folders = render_views(cfg, opts, saved, device)
        print(f"rendered {len(folders)} view(s) of {saved.folder} into {opts.out}")
        return
    result = evaluate(cfg, opts, saved, device)
    print(f"model {saved.folder}, dataset {cfg.data.path}, {len(result['frames'])} frame(s)")
    print(format_table(result))
    out = metrics_path(cfg, saved.step)
    write_text(out, json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
