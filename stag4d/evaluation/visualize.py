"""Render a trained STAG4D model: orbit videos and a contact sheet (SPEC section 8).

    python visualize.py --config configs/stag4d.yaml path=dataset/NAME save_path=NAME \\
        [load_step=N] [frames=N] [resolution=R] [elevation=E] [background=white|black|[r,g,b]] \\
        [modes=[image,depth,alpha]] [sheet_times=4] [sheet_azimuths=[0,60,120,180,240,300]] \\
        [sheet_size=S] [chunk=8] [gui=web|dearpygui]

Loads ``<outdir>/<save_path>/<step>/`` (model.ply + deformation.pt; the latest saved step unless
``load_step``) and writes to ``<valid_dir>/<save_path>/``:

* ``video_<track>.mp4`` (H.264, yuv420p) for the five tracks of the released ``visualize.py``:
  ``front`` (azimuth 0), ``back`` (180), ``front_moving`` (from -30, +2 degrees per frame),
  ``back_moving`` (from 150, +2 per frame) and ``round`` (360 / F degrees per frame), all at the
  config's ``elevation``, ``radius`` and ``fovy``, ``resolution`` pixels (default ``ref_size``),
  ``video_fps`` frames per second;
* with ``modes`` holding ``depth`` / ``alpha``: ``video_<track>_depth.mp4`` (expected depth,
  normalized per video over the object's pixels, near = bright) / ``video_<track>_alpha.mp4``;
* ``contact_sheet.png``: rows = ``sheet_times`` evenly spaced training frames (with ``frames=N``:
  evenly spaced among the N rendered times, so that in-between times show), columns =
  ``sheet_azimuths``, tiles of ``sheet_size`` pixels (default min(resolution, 256)), labelled.

Times: by default the T training frames at t = i / T. ``frames=N`` renders N times evenly spaced
in [0, (T - 1) / T] instead (the deformation field is continuous in time). T is ``num_frames`` when
set, else the one the run was trained with (its config.yaml, its frames/ folder), else the number
of frames in ``path``/ref/.

Rendering is batched: one deformation call for ``chunk`` times, then one ``render_batch`` for
those times seen by every track. ``gui=web`` (a browser, through viser) or ``gui=dearpygui`` (a
window; ``gui=True``) opens the viewer (``viewer.run_viewer``, view only, with the dataset's frames
as the reference when ``path`` has them) on the saved model instead of writing files.

Everything after ``--config`` is a dotted override: the keys above that are not run-config keys
belong to this script (:class:`VisualizeOptions`), the others go to the run config (:mod:`stag4d.config`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from cam_utils import Camera, CameraConfig
from stag4d import viewer
from stag4d.config import RunConfig, load_config, split_script_overrides
from stag4d.data import video
from stag4d.data.frames import FrameData, load_frames
from stag4d.device import resolve_device
from stag4d.errors import UserError, exit_on_user_error
from stag4d.evaluation.saved_model import open_saved_model
from stag4d.files import save_image
from stag4d.rasterizer import render_batch

MODES = ("image", "depth", "alpha")
# (name, start azimuth, degrees per frame); None = one full turn over the clip (360 / F).
VIDEO_TRACKS: tuple[tuple[str, float, Optional[float]], ...] = (
    ("front", 0.0, 0.0),
    ("back", 180.0, 0.0),
    ("front_moving", -30.0, 2.0),
    ("back_moving", 150.0, 2.0),
    ("round", 0.0, None),
)
BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


class VisualizeError(UserError):
    """A bad option of visualize.py or a missing saved model."""


@dataclass
class VisualizeOptions:
    """Settings of this script (the ``key=value`` overrides that are not run-config keys)."""

    load_step: Optional[int] = None  # None = the latest saved step
    frames: Optional[int] = None  # None = the T training frames; N = N interpolated times
    resolution: Optional[int] = None  # None = ref_size
    background: Any = "white"  # white | black | [r, g, b] in [0, 1]
    modes: list = field(default_factory=lambda: ["image"])
    sheet_times: int = 4  # contact sheet rows (0 = no contact sheet)
    sheet_azimuths: list = field(default_factory=lambda: [0.0, 60.0, 120.0, 180.0, 240.0, 300.0])
    sheet_size: Optional[int] = None  # None = min(resolution, 256)
    chunk: int = 8  # times per deformation call


OPTION_KEYS = tuple(f.name for f in fields(VisualizeOptions))


# ------------------------------------------------------------------------------------------------
# command line


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[str, list[str]]:
    parser = argparse.ArgumentParser(
        description="Render a trained STAG4D model: five orbit videos and a contact sheet (or open the viewer).",
        epilog="example: python visualize.py --config configs/stag4d.yaml path=dataset/minions save_path=minions frames=60",
    )
    parser.add_argument("--config", default="configs/stag4d.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"run-config overrides, or this script's keys: {', '.join(OPTION_KEYS)}")
    args = parser.parse_args(argv)
    return args.config, list(args.overrides)


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], VisualizeOptions]:
    """(run-config overrides, this script's options) from ``key=value`` items."""
    config_items, own = split_script_overrides(overrides, OPTION_KEYS, example="save_path=run1 or frames=60")
    return config_items, make_options(**own)


def make_options(**values: Any) -> VisualizeOptions:
    """Validated :class:`VisualizeOptions` (``modes`` and ``sheet_azimuths`` may be single values)."""
    opts = VisualizeOptions(**values)
    if isinstance(opts.modes, str):
        opts.modes = [opts.modes]
    opts.modes = list(opts.modes)
    unknown = [m for m in opts.modes if m not in MODES]
    if unknown or not opts.modes:
        raise VisualizeError(f"modes={opts.modes}: choose one or more of {', '.join(MODES)}, e.g. modes=[image,depth]")
    if not isinstance(opts.sheet_azimuths, (list, tuple)):
        opts.sheet_azimuths = [opts.sheet_azimuths]
    try:
        opts.sheet_azimuths = [float(a) for a in opts.sheet_azimuths]
    except (TypeError, ValueError):
        raise VisualizeError(f"sheet_azimuths={opts.sheet_azimuths}: give degrees, e.g. [0,90,180,270]") from None
    for key, minimum in (("load_step", 0), ("frames", 1), ("resolution", 8), ("sheet_size", 8),
                         ("sheet_times", 0), ("chunk", 1)):
        value = getattr(opts, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise VisualizeError(f"{key}={value}: give a whole number >= {minimum}")
    if opts.sheet_times > 0 and not opts.sheet_azimuths:
        raise VisualizeError("sheet_azimuths=[] with sheet_times > 0: list some azimuths or set sheet_times=0")
    opts.background = list(parse_background(opts.background))
    return opts


def parse_background(value: Any) -> tuple[float, float, float]:
    """``white`` / ``black`` / [r, g, b] in [0, 1] -> (r, g, b)."""
    if isinstance(value, str):
        if value.lower() in BACKGROUNDS:
            return BACKGROUNDS[value.lower()]
    elif isinstance(value, (list, tuple)) and len(value) == 3:
        try:
            rgb = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            rgb = None
        if rgb is not None and all(0.0 <= v <= 1.0 for v in rgb):
            return rgb  # type: ignore[return-value]
    raise VisualizeError(f"background={value}: use white, black or [r,g,b] with values in [0, 1]")


# ------------------------------------------------------------------------------------------------
# times and cameras


def training_times(num_frames: int) -> list[float]:
    """The T training times t = i / T."""
    return [i / num_frames for i in range(num_frames)]


def interpolated_times(num_frames: int, count: int) -> list[float]:
    """``count`` times evenly spaced in [0, (T - 1) / T] (first and last training frame included)."""
    last = (num_frames - 1) / num_frames
    if count == 1:
        return [0.0]
    return [last * j / (count - 1) for j in range(count)]


def orbit_track(start_azimuth: float, degrees_per_frame: float, num: int, camera: CameraConfig, size: int,
                device: torch.device | str = "cpu") -> list[Camera]:
    """``num`` square cameras on the orbit: frame f at azimuth ``start + f * degrees_per_frame``."""
    return [camera.orbit(0.0, start_azimuth + f * degrees_per_frame, size, device=device) for f in range(num)]


def video_tracks(num: int, camera: CameraConfig, size: int, device: torch.device | str = "cpu",
                 round_step: str = "exact") -> dict[str, list[Camera]]:
    """The five tracks of :data:`VIDEO_TRACKS`, ``num`` cameras each (``round`` turns 360 / num
    degrees per frame, or ``360 // num`` with ``round_step="integer"``, as the released code)."""
    tracks = {}
    for name, start, step in VIDEO_TRACKS:
        per_frame = (360.0 / num if round_step == "exact" else float(360 // num)) if step is None else step
        tracks[name] = orbit_track(start, per_frame, num, camera, size, device)
    return tracks


# ------------------------------------------------------------------------------------------------
# rendering


@torch.no_grad()
def iter_track_frames(
    model,
    tracks: dict[str, Sequence[Camera]],
    times: Sequence[float],
    background: Sequence[float] = (1.0, 1.0, 1.0),
    backend: str = "auto",
    chunk: int = 8,
    progress: bool = True,
):
    """Render every track at every time, a chunk of times at a time: frame f of a track is its
    camera f at ``times[f]``.

    The model is deformed once per chunk (``gaussians_at_times``) and those Gaussians serve every
    track in one ``render_batch`` call.

    Args:
        model: a ``GaussianModel4D`` (its device is used).
        tracks: name -> F cameras (F = len(times)).
        times: F normalized times.
        background: RGB in [0, 1] behind the images.
    Yields:
        (name, image [B, 3, H, W], alpha [B, H, W], depth [B, H, W]) per track and chunk of B
        times, in time order, float on the model's device (depth alpha-weighted, as rendered).
    """
    num = len(times)
    for name, cameras in tracks.items():
        if len(cameras) != num:
            raise ValueError(f"track {name} has {len(cameras)} cameras for {num} times")
    device = model.device
    bg = torch.tensor([float(c) for c in background], dtype=torch.float32, device=device)
    names = list(tracks)
    with tqdm(total=num, desc="render", unit="frame", disable=not progress, leave=False) as bar:
        for start in range(0, num, chunk):
            chunk_times = [float(t) for t in times[start:start + chunk]]
            gaussians = model.gaussians_at_times(chunk_times)
            cameras = [tracks[name][start + offset].with_time(time).to(device)
                       for name in names for offset, time in enumerate(chunk_times)]
            outputs = render_batch(gaussians * len(names), cameras, bg.expand(len(cameras), 3), backend=backend)
            for k, name in enumerate(names):
                outs = outputs[k * len(chunk_times):(k + 1) * len(chunk_times)]
                yield (name, torch.stack([o.image for o in outs]), torch.stack([o.alpha[0] for o in outs]),
                       torch.stack([o.depth[0] for o in outs]))
            bar.update(len(chunk_times))


class _DepthClip:
    """Alpha-weighted depth and alpha of one clip, kept (float16) until the clip's depth range is known."""

    def __init__(self):
        self.depth: list[np.ndarray] = []
        self.alpha: list[np.ndarray] = []

    def add(self, alpha: torch.Tensor, depth: torch.Tensor) -> None:
        self.alpha.append(alpha.half().cpu().numpy())
        self.depth.append(depth.half().cpu().numpy())

    def frames(self, background: Sequence[float]) -> np.ndarray:
        """uint8 [F, H, W, 3]: depth normalized over the whole clip (:func:`video.depth_to_rgb`)."""
        depth = np.concatenate(self.depth).astype(np.float32)
        alpha = np.concatenate(self.alpha).astype(np.float32)
        return video.quantize(video.depth_to_rgb(depth, alpha, background))


def _alpha_frames(alpha: torch.Tensor) -> np.ndarray:
    """Alpha [B, H, W] -> grey uint8 frames [B, H, W, 3]."""
    return video.to_uint8(alpha.unsqueeze(1).expand(-1, 3, -1, -1))


def render_tracks(
    model,
    tracks: dict[str, Sequence[Camera]],
    times: Sequence[float],
    background: Sequence[float] = (1.0, 1.0, 1.0),
    backend: str = "auto",
    modes: Sequence[str] = ("image",),
    chunk: int = 8,
    progress: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """Frames of every track (see :func:`iter_track_frames`), in memory.

    Args:
        modes: subset of ``image`` (over ``background``), ``depth`` (colour-mapped expected depth,
            normalized per track over the object's pixels, over ``background``), ``alpha`` (grey).
    Returns:
        name -> mode -> uint8 frames [F, H, W, 3].
    """
    collected: dict[str, dict[str, list]] = {name: {"image": [], "alpha": []} for name in tracks}
    depth_clips = {name: _DepthClip() for name in tracks}
    for name, image, alpha, depth in iter_track_frames(model, tracks, times, background, backend, chunk, progress):
        if "image" in modes:
            collected[name]["image"].append(video.to_uint8(image))
        if "alpha" in modes:
            collected[name]["alpha"].append(_alpha_frames(alpha))
        if "depth" in modes:
            depth_clips[name].add(alpha, depth)
    result: dict[str, dict[str, np.ndarray]] = {}
    for name in tracks:
        result[name] = {}
        for mode in modes:
            result[name][mode] = (depth_clips[name].frames(background) if mode == "depth"
                                  else np.concatenate(collected[name][mode]))
    return result


def render_orbit_frames(model, cameras: Sequence[Camera], times: Sequence[float],
                        background: Sequence[float] = (1.0, 1.0, 1.0), backend: str = "auto",
                        modes: Sequence[str] = ("image",), chunk: int = 8, progress: bool = True) -> dict[str, np.ndarray]:
    """One track: camera f at ``times[f]`` -> mode -> uint8 frames [F, H, W, 3] (see :func:`render_tracks`)."""
    return render_tracks(model, {"track": cameras}, times, background, backend, modes, chunk, progress)["track"]


def sheet_frame_indices(num_frames: int, rows: int) -> list[int]:
    """``rows`` training frames evenly spaced from the first to the last (distinct when T allows)."""
    rows = min(rows, num_frames)
    if rows == 1:
        return [0]
    return sorted({round(j * (num_frames - 1) / (rows - 1)) for j in range(rows)})


def contact_sheet(model, num_frames: int, azimuths: Sequence[float], rows: int, camera: CameraConfig, size: int,
                  background: Sequence[float] = (1.0, 1.0, 1.0), backend: str = "auto", chunk: int = 8,
                  progress: bool = True, frames: Optional[int] = None) -> np.ndarray:
    """Grid of renders: rows = ``rows`` evenly spaced training frames (``frames=N``: evenly spaced
    among the N times of :func:`interpolated_times`), columns = ``azimuths``.

    Returns:
        uint8 image [H', W', 3] with labels (frame index, fractional between frames, and time per
        row; azimuth per column).
    """
    if frames is None:
        frame_ids = sheet_frame_indices(num_frames, rows)
        times = [i / num_frames for i in frame_ids]
    else:
        all_times = interpolated_times(num_frames, frames)
        times = [all_times[j] for j in sheet_frame_indices(frames, rows)]
        frame_ids = [t * num_frames for t in times]
    tracks = {f"az{k}": orbit_track(float(a), 0.0, len(times), camera, size, model.device)
              for k, a in enumerate(azimuths)}
    frames = render_tracks(model, tracks, times, background, backend, ("image",), chunk, progress)
    tiles = np.stack([np.stack([frames[f"az{k}"]["image"][r] for k in range(len(azimuths))])
                      for r in range(len(times))])
    row_labels = [f"frame {i:g}  t={t:.2f}" if float(i).is_integer() else f"frame {i:.2f}  t={t:.3f}"
                  for i, t in zip(frame_ids, times)]
    column_labels = [f"azimuth {a:g}" for a in azimuths]
    return video.contact_sheet(tiles, row_labels, column_labels)


def video_path(out_folder: str, track: str, mode: str) -> str:
    """``video_<track>.mp4`` for images, ``video_<track>_<mode>.mp4`` for depth and alpha."""
    suffix = "" if mode == "image" else f"_{mode}"
    return os.path.join(out_folder, f"video_{track}{suffix}.mp4")


def write_videos(model, tracks: dict[str, Sequence[Camera]], times: Sequence[float], out_folder: str, fps: float,
                 background: Sequence[float] = (1.0, 1.0, 1.0), backend: str = "auto",
                 modes: Sequence[str] = ("image",), chunk: int = 8, progress: bool = True) -> list[str]:
    """Render the tracks and write one MP4 per track and mode into ``out_folder``; returns the paths.

    Image and alpha frames stream to ffmpeg as they are rendered (memory does not grow with the
    frame count); depth is kept (float16) until each clip's depth range is known.
    """
    streamed = [m for m in modes if m != "depth"]
    depth_clips = {name: _DepthClip() for name in tracks} if "depth" in modes else {}
    with contextlib.ExitStack() as stack:
        writers = {(name, mode): stack.enter_context(video.VideoWriter(video_path(out_folder, name, mode), fps))
                   for name in tracks for mode in streamed}
        for name, image, alpha, depth in iter_track_frames(model, tracks, times, background, backend, chunk, progress):
            if "image" in streamed:
                writers[name, "image"].write(video.to_uint8(image))
            if "alpha" in streamed:
                writers[name, "alpha"].write(_alpha_frames(alpha))
            if name in depth_clips:
                depth_clips[name].add(alpha, depth)
    for name, clip in depth_clips.items():
        video.write_video(video_path(out_folder, name, "depth"), clip.frames(background), fps)
    return [video_path(out_folder, name, mode) for name in tracks for mode in modes]


def write_outputs(model, cfg: RunConfig, opts: VisualizeOptions, num_frames: int, out_folder: str,
                  progress: bool = True) -> list[str]:
    """Render and write the videos (and the contact sheet) into ``out_folder``; returns the paths."""
    size = opts.resolution or cfg.data.ref_size
    times = training_times(num_frames) if opts.frames is None else interpolated_times(num_frames, opts.frames)
    tracks = video_tracks(len(times), cfg.camera, size, model.device, cfg.output.video_round_step)
    written = write_videos(model, tracks, times, out_folder, cfg.output.video_fps, opts.background, cfg.train.backend,
                           opts.modes, opts.chunk, progress)
    if opts.sheet_times > 0:
        sheet_size = opts.sheet_size or min(size, 256)
        sheet = contact_sheet(model, num_frames, opts.sheet_azimuths, opts.sheet_times, cfg.camera, sheet_size,
                              opts.background, cfg.train.backend, opts.chunk, progress, frames=opts.frames)
        path = os.path.join(out_folder, "contact_sheet.png")
        save_image(path, sheet)
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------
# viewer on a saved model


def reference_frames(cfg: RunConfig, num_frames: int) -> Optional[FrameData]:
    """The dataset's frames for the viewer's reference overlay, or None when ``path`` is not given
    or has no ref/ (the viewer then shows the model alone)."""
    data = cfg.data
    if not data.path or not os.path.isdir(os.path.join(data.path, "ref")):
        return None
    return load_frames(data.path, data.ref_size, data.anchor_size, num_frames, require_anchors=False,
                       num_anchor_views=len(cfg.camera.anchor_views))


# ------------------------------------------------------------------------------------------------
# entry point


def load_settings(config_path: str, overrides: Sequence[str]) -> tuple[RunConfig, VisualizeOptions]:
    """(run config, options) from the command line; ``path`` may be left out when ``save_path`` is given."""
    config_items, opts = split_overrides(overrides)
    has_save_path = any(item.split("=", 1)[0].strip() in ("save_path", "output.save_path") for item in config_items)
    cfg = load_config(config_path, config_items, require_path=not has_save_path)
    if not cfg.output.save_path:
        raise VisualizeError("no run given: add save_path=NAME (the run under logs/) or path=dataset/NAME")
    return cfg, opts


def run(cfg: RunConfig, opts: VisualizeOptions, progress: bool = True) -> list[str]:
    """Load the saved model and write the outputs (or open the viewer with ``gui``); returns the paths."""
    if cfg.viewer.gui != "off":
        viewer.require_front_end(cfg.viewer)  # fails in one line before any loading
    saved = open_saved_model(cfg, opts.load_step, resolve_device(cfg.train.device))
    if cfg.viewer.gui != "off":
        session = viewer.SavedModelSession(saved.model, cfg.train.backend, saved.num_frames,
                                           data=reference_frames(cfg, saved.num_frames),
                                           folder=os.path.join(cfg.output.outdir, cfg.output.save_path, "viewer"))
        viewer.run_viewer(session, cfg.viewer, cfg.camera, cfg.data.ref_size, cfg.output.video_fps)
        return []
    out_folder = os.path.join(cfg.output.valid_dir, cfg.output.save_path)
    print(f"rendering {saved.folder} ({saved.model.num} Gaussians, T={saved.num_frames}) to {out_folder}/",
          file=sys.stderr)
    return write_outputs(saved.model, cfg, opts, saved.num_frames, out_folder, progress)


@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> None:
    config_path, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    cfg, opts = load_settings(config_path, overrides)
    for path in run(cfg, opts):
        print(path)


if __name__ == "__main__":
    main()
