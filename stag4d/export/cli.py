"""Export a trained 4D object for other tools: an animated mesh (GLB), .splat or 3DGS PLY sequences.

    python scripts/export.py --config configs/stag4d.yaml save_path=NAME format=glb|splat|ply [out=PATH] \\
        [load_step=N] [frames=N | frames=[i,j,...]] [fps=F] [mesh_resolution=R] [max_faces=N] \\
        [density_threshold=D] [min_component=C] [interpolation=linear|step] [texture=vertex|uv] [check=true]

Loads ``<outdir>/<save_path>/<step>/`` (the latest complete step unless ``load_step``) and writes:

* ``format=glb`` (default): one ``.glb`` file (``out``, default
  ``<valid_dir>/<save_path>/export/<save_path>.glb``): the canonical surface of the Gaussians'
  occupancy (:mod:`.mesh`), vertex-coloured (or textured, :mod:`.texture`), moved by the trained
  deformation field to every exported time, stored as one morph target per frame with a weights
  animation at ``fps`` (:mod:`.gltf`). ``check=true`` then reads the file back and measures it against the Gaussians
  (:mod:`.checks`): ``<name>_check.json`` and a contact sheet ``<name>_sheet.png``.
* ``format=splat``: ``frame_<i>.splat`` per exported time (the 32-byte layout of :mod:`.splat`)
  and ``manifest.json`` in the folder ``out`` (default ``<valid_dir>/<save_path>/export/splat``).
  ``check=true`` reads the files back and prints the largest differences from the Gaussians.
* ``format=ply``: ``frame_<i>.ply`` per exported time, 3D Gaussian Splatting PLYs (raw values,
  any SH degree), and ``manifest.json``, in ``out`` (default ``<valid_dir>/<save_path>/export/ply``).

The manifest: ``{"format", "T" (files), "fps", "duration" (T / fps), "files", "times" (normalized,
frame i of the run is at i / T_run), "frames" (the run's frame index of each file, or null for
resampled times), "run_frames" (T_run), "source": {"folder", "step"}, "num_gaussians"}``.

Times: the run's T training frames by default; ``frames=N`` N evenly spaced times over the same
span (the model is continuous in time); ``frames=[i, j, ...]`` those training frames.

Everything after ``--config`` is a dotted override: this script's keys (:class:`ExportOptions`)
go to it, the others to the run config (:mod:`stag4d.config`).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time
from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from gs_renderer import GaussianModel4D
from stag4d.config import RunConfig, load_config, split_script_overrides
from stag4d.device import resolve_device
from stag4d.errors import UserError, exit_on_user_error
from stag4d.evaluation.saved_model import SavedModel, open_saved_model
from stag4d.evaluation.visualize import interpolated_times, sheet_frame_indices
from stag4d.export import checks, gltf, mesh, splat, texture
from stag4d.export.occupancy import GaussianCloud
from stag4d.files import save_image, write_text
from stag4d.gaussians.ply import read_gaussian_ply
from stag4d.settings import ConfigError, check_settings, fields_help, setting

FORMATS = ("glb", "splat", "ply")
TEXTURES = ("vertex", "uv")
MANIFEST = "manifest.json"
SHEET_AZIMUTHS = (0.0, 120.0, 240.0)
SHEET_ROWS = 4
SHEET_SIZE = 192


class ExportError(UserError):
    """A bad option of export.py, or nothing to export."""


@dataclass
class ExportOptions:
    """Settings of this script (the ``key=value`` overrides that are not run-config keys)."""

    format: str = setting("glb", "glb (animated mesh) | splat (.splat per frame) | ply (3DGS PLY per frame)",
                          choices=FORMATS)
    out: Optional[str] = setting(None, "the .glb file, or the folder of the splat / ply frames; "
                                       "null = <valid_dir>/<save_path>/export/")
    load_step: Optional[int] = setting(None, "saved step to export; null = the latest complete one", ge=0)
    frames: Any = setting(None, "null = the run's T frames; N = N evenly spaced times; [i, j, ...] = those frames")
    fps: Optional[float] = setting(None, "playback rate of the GLB animation and the manifest; null = video_fps",
                                   gt=0)
    mesh_resolution: int = setting(192, "glb: occupancy grid cells along the longest side of the object", ge=16,
                                   le=1024)
    max_faces: int = setting(50000, "glb: face budget, the mesh is decimated to this many triangles (0 = keep all)",
                             ge=0)
    density_threshold: float = setting(0.5, "glb: the surface is where the Gaussians' occupancy "
                                            "1 - prod(1 - alpha_i(x)) reaches this (0.5: a lone Gaussian's "
                                            "alpha = 0.5 silhouette)", gt=0, lt=1)
    min_component: float = setting(0.01, "glb: drop connected parts with fewer than this fraction of the faces",
                                   ge=0, lt=1)
    animation: str = setting("gaussians", "glb: gaussians (the surface of one frame, each vertex carried by the "
                                          "Gaussians around it) | field (the canonical surface moved by the "
                                          "deformation field at the vertices)", choices=mesh.ANIMATIONS)
    mesh_frame: Optional[int] = setting(None, "glb, animation=gaussians: the exported frame whose Gaussians are "
                                              "meshed; null = the middle one", ge=0)
    motion_smoothing: int = setting(mesh.MOTION_SMOOTHING, "glb, animation=gaussians: neighbour-averaging passes "
                                                           "over the vertices' displacements (0 = none; fewer: "
                                                           "vertices follow their own Gaussians more closely, the "
                                                           "surface may crumple)", ge=0)
    interpolation: str = setting("linear", "glb: between frames, linear (blend) or step (hold)",
                                 choices=gltf.INTERPOLATIONS)
    texture: str = setting("vertex", "glb: the Gaussians' colours as vertex colours (vertex) or baked into a UV "
                                     "texture (uv: xatlas unwrap, one colour per texel)", choices=TEXTURES)
    texture_size: int = setting(1024, "glb, texture=uv: width and height of the texture in pixels", ge=64, le=8192)
    check: bool = setting(False, "read the export back and measure it (glb: silhouette IoU, motion, contact "
                                 "sheet; splat: round-trip errors)")


OPTION_KEYS = tuple(f.name for f in fields(ExportOptions))


# ------------------------------------------------------------------------------------------------
# command line


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[str, list[str]]:
    option_help = "; ".join(f"{name}: {text}" for name, _, text in fields_help(ExportOptions))
    parser = argparse.ArgumentParser(
        description="Export a trained STAG4D model: animated mesh (GLB), .splat or 3DGS PLY sequences.",
        epilog="example: python scripts/export.py --config configs/demo.yaml format=glb check=true. "
               f"Options: {option_help}",
    )
    parser.add_argument("--config", default="configs/stag4d.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"run-config overrides, or this script's keys: {', '.join(OPTION_KEYS)}")
    args = parser.parse_args(argv)
    return args.config, list(args.overrides)


def make_options(**values: Any) -> ExportOptions:
    """Validated :class:`ExportOptions`."""
    try:
        opts = ExportOptions(**values)
    except TypeError as err:
        raise ExportError(f"unknown export option ({err}); the options are {', '.join(OPTION_KEYS)}") from None
    for key in ("load_step", "mesh_resolution", "max_faces", "mesh_frame", "texture_size"):
        value = getattr(opts, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ExportError(f"{key}={value}: give a whole number")
    for key in ("fps", "density_threshold", "min_component"):
        value = getattr(opts, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ExportError(f"{key}={value}: give a number")
    if not isinstance(opts.check, bool):
        raise ExportError(f"check={opts.check}: give true or false")
    frames = opts.frames
    if frames is not None:
        if isinstance(frames, (list, tuple)):
            if not frames or not all(isinstance(i, int) and not isinstance(i, bool) for i in frames):
                raise ExportError(f"frames={frames}: give frame indices, e.g. frames=[0,4,8], or a count, e.g. frames=60")
            if len(set(frames)) != len(frames):
                raise ExportError(f"frames={frames}: an index appears twice")
            opts.frames = list(frames)
        elif isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ExportError(f"frames={frames}: give a count >= 1 (e.g. frames=60) or indices (e.g. frames=[0,4,8])")
    try:
        check_settings(opts)
    except ConfigError as err:
        raise ExportError(str(err)) from None
    if opts.out is not None:
        opts.out = str(opts.out)
        if opts.format == "glb" and not opts.out.lower().endswith(".glb"):
            raise ExportError(f"out={opts.out}: format=glb writes one .glb file, give a path ending in .glb")
        if opts.format != "glb" and opts.out.lower().endswith((".glb", ".splat", ".ply", ".json")):
            raise ExportError(f"out={opts.out}: format={opts.format} writes a folder of frames, give a folder")
    return opts


def load_settings(config_path: str, overrides: Sequence[str]) -> tuple[RunConfig, ExportOptions]:
    """(run config, options) from the command line; ``path`` may be left out when ``save_path`` is given."""
    config_items, own = split_script_overrides(overrides, OPTION_KEYS, example="save_path=run1 or format=splat")
    opts = make_options(**own)
    has_save_path = any(item.split("=", 1)[0].strip() in ("save_path", "output.save_path") for item in config_items)
    cfg = load_config(config_path, config_items, require_path=not has_save_path)
    if not cfg.output.save_path:
        raise ExportError("no run given: add save_path=NAME (the run under logs/) or path=dataset/NAME")
    return cfg, opts


# ------------------------------------------------------------------------------------------------
# times and paths


@dataclass
class Timeline:
    """What is exported: normalized ``times``, the run's frame index of each (None when
    resampled), the run's T, and the playback rate."""

    times: list[float]
    frames: Optional[list[int]]
    run_frames: int
    fps: float

    @property
    def duration(self) -> float:
        return len(self.times) / self.fps

    def label(self, k: int) -> str:
        return f"frame {self.frames[k]}" if self.frames is not None else f"t={self.times[k]:.3f}"


def make_timeline(frames: Any, run_frames: int, fps: float) -> Timeline:
    if frames is None:
        ids = list(range(run_frames))
    elif isinstance(frames, int):
        return Timeline(interpolated_times(run_frames, frames), None, run_frames, fps)
    else:
        bad = [i for i in frames if not 0 <= i < run_frames]
        if bad:
            raise ExportError(f"frames={frames}: the run has frames 0..{run_frames - 1}")
        ids = list(frames)
    return Timeline([i / run_frames for i in ids], ids, run_frames, fps)


def default_out(cfg: RunConfig, fmt: str) -> str:
    folder = os.path.join(cfg.output.valid_dir, cfg.output.save_path, "export")
    name = os.path.basename(os.path.normpath(cfg.output.save_path))
    return os.path.join(folder, f"{name}.glb") if fmt == "glb" else os.path.join(folder, fmt)


def frame_file(k: int, ext: str) -> str:
    return f"frame_{k:04d}.{ext}"


def _prepare_folder(folder: str) -> None:
    """Create ``folder``; remove frame files a previous export left there (a new manifest lists
    only the new ones)."""
    if os.path.isfile(folder):
        raise ExportError(f"out={folder} is a file: give a folder for the frames")
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(os.path.join(folder, "frame_*.*")):
        if re.fullmatch(r"frame_\d{4}\.(splat|ply)", os.path.basename(old)):
            os.remove(old)


def read_manifest(folder: str) -> dict:
    with open(os.path.join(folder, MANIFEST)) as f:
        return json.load(f)


def manifest(fmt: str, timeline: Timeline, files: list[str], saved: SavedModel) -> dict:
    return {
        "format": fmt,
        "T": len(files),
        "fps": timeline.fps,
        "duration": timeline.duration,
        "files": files,
        "times": timeline.times,
        "frames": timeline.frames,
        "run_frames": timeline.run_frames,
        "source": {"folder": saved.folder, "step": saved.step},
        "num_gaussians": saved.model.num,
        "layout": "32 bytes per Gaussian: position 3xf32, scale 3xf32, RGBA 4xu8, rotation wxyz 4xu8 (q*128+128)"
                  if fmt == "splat" else "3D Gaussian Splatting PLY (raw values)",
    }


# ------------------------------------------------------------------------------------------------
# the three formats


@torch.no_grad()
def export_sequence(model: GaussianModel4D, timeline: Timeline, folder: str, fmt: str, saved: SavedModel,
                    chunk: int = 8, progress: bool = True) -> list[str]:
    """Write one file per time (``splat`` or ``ply``) and the manifest into ``folder``; returns the paths."""
    _prepare_folder(folder)
    files = []
    with tqdm(total=len(timeline.times), desc=f"export {fmt}", unit="frame", disable=not progress) as bar:
        for start in range(0, len(timeline.times), chunk):
            batch = timeline.times[start:start + chunk]
            for offset, gaussians in enumerate(model.gaussians_at_times(batch)):
                name = frame_file(start + offset, fmt)
                path = os.path.join(folder, name)
                if fmt == "splat":
                    splat.write_splat(path, gaussians)
                else:  # the trainer's frames/<i>.ply writer
                    model.export_frame_ply(path, batch[offset])
                files.append(name)
                bar.update(1)
    manifest_path = os.path.join(folder, MANIFEST)
    write_text(manifest_path, json.dumps(manifest(fmt, timeline, files, saved), indent=1) + "\n")
    return [os.path.join(folder, f) for f in files] + [manifest_path]


def reference_frame(opts: ExportOptions, timeline: Timeline) -> int:
    """The exported frame whose Gaussians are meshed (``mesh_frame``, else the middle one)."""
    if opts.mesh_frame is None:
        return len(timeline.times) // 2
    if opts.mesh_frame >= len(timeline.times):
        raise ExportError(f"mesh_frame={opts.mesh_frame}: the export has frames 0..{len(timeline.times) - 1}")
    return opts.mesh_frame


@torch.no_grad()
def animated_surface(model: GaussianModel4D, timeline: Timeline, opts: ExportOptions, where: str,
                     progress: bool = True) -> tuple[mesh.SurfaceMesh, np.ndarray]:
    """The coloured surface and its vertex positions [F, V, 3] at every exported time."""
    if opts.animation == "gaussians":
        reference_time = timeline.times[reference_frame(opts, timeline)]
        cloud = GaussianCloud.from_params(model.gaussians_at(reference_time))
    else:
        cloud = GaussianCloud.from_params(model.gaussians_at(None))
    try:
        surface = mesh.extract_surface(cloud, opts.mesh_resolution, opts.density_threshold, opts.max_faces,
                                       opts.min_component, bounds=model.deformation.cfg.bounds, progress=progress,
                                       keep_colors=opts.texture == "uv")
    except (mesh.EmptySurface, ValueError) as err:
        raise ExportError(f"{where}: no mesh ({err}); lower density_threshold (now "
                          f"{opts.density_threshold:g}) or min_component") from None
    if opts.animation == "gaussians":
        skinning = mesh.skin_to_gaussians(surface.vertices, cloud)
        positions = mesh.carry_with_gaussians(model, surface.vertices, skinning, reference_time, timeline.times)
        positions = mesh.smooth_displacements(positions, surface.faces, reference_frame(opts, timeline),
                                              opts.motion_smoothing)
    else:
        positions = mesh.deform_vertices(model, surface.vertices, timeline.times)
    return surface, positions


def export_glb(model: GaussianModel4D, timeline: Timeline, path: str, opts: ExportOptions, saved: SavedModel,
               progress: bool = True) -> mesh.SurfaceMesh:
    """Extract the surface, move it to every time and write the animated GLB."""
    surface, positions = animated_surface(model, timeline, opts, saved.folder, progress)
    extras = {"times": timeline.times, "frames": timeline.frames, "run_frames": timeline.run_frames,
              "fps": timeline.fps, "animation": opts.animation, "texture": opts.texture,
              "source": {"folder": saved.folder, "step": saved.step}}
    name = os.path.splitext(os.path.basename(path))[0]
    normals = mesh.vertex_normals(positions[0], surface.faces)
    if opts.texture == "vertex":
        gltf.write_animated_glb(path, positions, normals, surface.faces, surface.colors, timeline.fps,
                                opts.interpolation, name=name, extras=extras)
        return surface
    try:
        layout = texture.unwrap(surface.vertices, surface.faces, opts.texture_size)
    except texture.TextureError as err:
        raise ExportError(str(err)) from None
    image = texture.bake(surface.vertices, layout, surface.color_field, opts.texture_size)
    # the vertices split at the charts' seams keep the normals of the uncut surface (no shading seams)
    gltf.write_animated_glb(path, positions[:, layout.vertex_map], normals[layout.vertex_map], layout.faces, None,
                            timeline.fps, opts.interpolation, name=name, extras=extras, uvs=layout.uvs, texture=image)
    return mesh.SurfaceMesh(surface.vertices[layout.vertex_map], layout.faces, surface.colors[layout.vertex_map])


# ------------------------------------------------------------------------------------------------
# checks


def check_glb(path: str, model: GaussianModel4D, cfg: RunConfig, opts: ExportOptions, progress: bool = True
              ) -> tuple[dict, list[str]]:
    """Measure the written GLB (read back) against the Gaussians; writes the report and the contact sheet."""
    animated = gltf.read_animated_glb(path)
    times = animated.extras["times"]
    cameras = checks.check_cameras(cfg.camera, cfg.data.ref_size, cfg.data.anchor_size, model.device)
    ious, psnr = checks.compare_renders(model, animated.positions, animated.faces, times, cameras, cfg.train.backend,
                                        progress, animated.colors if animated.texture is None else None,
                                        animated.uvs, animated.texture)
    reference = reference_frame(opts, Timeline(times, None, 0, 1.0)) if opts.animation == "gaussians" else 0
    centres = checks.visible_centres(model, times)
    drift = checks.drift_distances(centres, animated.positions, reference)
    unmoved = np.repeat(animated.positions[:1], len(times), axis=0)  # the control: frame 0 left in place
    static_drift = checks.drift_distances(centres, unmoved, 0)
    nearest = checks.nearest_centre_distances(centres, animated.positions)
    rows = sheet_frame_indices(animated.num_targets, SHEET_ROWS)

    def extract(k: int) -> tuple[np.ndarray, np.ndarray]:
        cloud = GaussianCloud.from_params(model.gaussians_at(float(times[k])))
        fresh = mesh.extract_surface(cloud, opts.mesh_resolution, opts.density_threshold, opts.max_faces,
                                     opts.min_component, bounds=model.deformation.cfg.bounds, progress=False)
        return fresh.vertices, fresh.faces

    fresh = checks.reextraction_distances(animated.positions, animated.faces, rows, reference, extract)
    report = checks.summarize(ious, [c.name for c in cameras], drift, reference, static_drift, nearest, times, fresh,
                              rows, psnr)
    report.update({"file": path, "bytes": os.path.getsize(path), "vertices": int(animated.positions.shape[1]),
                   "faces": len(animated.faces), "morph_targets": animated.num_targets,
                   "duration": animated.duration, "animation": opts.animation, "texture": opts.texture})
    stem = os.path.splitext(path)[0]
    frames = animated.extras.get("frames")
    labels = [f"frame {frames[r]}" if frames else f"t={times[r]:.3f}" for r in rows]
    sheet = checks.mesh_contact_sheet(animated.positions, animated.faces, animated.colors, rows, labels,
                                      SHEET_AZIMUTHS, cfg.camera, SHEET_SIZE, animated.uvs, animated.texture)
    save_image(f"{stem}_sheet.png", sheet)
    write_text(f"{stem}_check.json", json.dumps(report, indent=1) + "\n")
    return report, [f"{stem}_check.json", f"{stem}_sheet.png"]


@torch.no_grad()
def check_splats(folder: str, model: GaussianModel4D) -> dict:
    """Largest differences between the .splat files (read back) and the deformed Gaussians, over all
    frames; Gaussians matched by position (stored exactly)."""
    info = read_manifest(folder)
    worst = {"position": 0.0, "scale_relative": 0.0, "rgb": 0.0, "opacity": 0.0, "quat": 0.0}
    for name, gaussians in zip(info["files"], model.gaussians_at_times(info["times"])):
        read = splat.read_splat(os.path.join(folder, name))
        expected = splat.splat_values(gaussians)
        a, b = np.lexsort(read["position"].T[::-1]), np.lexsort(expected["position"].T[::-1])
        worst["position"] = max(worst["position"], float(np.abs(read["position"][a] - expected["position"][b]).max()))
        worst["scale_relative"] = max(worst["scale_relative"], float(
            (np.abs(read["scale"][a] - expected["scale"][b]) / expected["scale"][b]).max()))
        for key in ("rgb", "opacity", "quat"):
            worst[key] = max(worst[key], float(np.abs(read[key][a] - expected[key][b]).max()))
    return worst


@torch.no_grad()
def check_plys(folder: str, model: GaussianModel4D) -> float:
    """Largest difference of any raw value between the PLY files (read back) and the deformed Gaussians."""
    info = read_manifest(folder)
    worst = 0.0
    for name, g in zip(info["files"], model.gaussians_at_times(info["times"])):
        read = read_gaussian_ply(os.path.join(folder, name))
        pairs = ((read.means, g.means), (read.log_scales, g.log_scales), (read.quats, g.quats),
                 (read.opacity_logits, g.opacity_logits), (read.sh_dc[:, 0], g.sh[:, 0]), (read.sh_rest, g.sh[:, 1:]))
        worst = max([worst] + [float(np.abs(a - b.float().cpu().numpy()).max(initial=0.0)) for a, b in pairs])
    return worst


# ------------------------------------------------------------------------------------------------
# entry point


def _size(paths: Sequence[str]) -> int:
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))


def run(cfg: RunConfig, opts: ExportOptions, progress: bool = True) -> list[str]:
    """Load the saved model and export it; returns the written paths."""
    started = time.perf_counter()
    saved = open_saved_model(cfg, opts.load_step, resolve_device(cfg.train.device))
    fps = float(opts.fps if opts.fps is not None else cfg.output.video_fps)
    timeline = make_timeline(opts.frames, saved.num_frames, fps)
    out = opts.out or default_out(cfg, opts.format)
    print(f"exporting {saved.folder} ({saved.model.num} Gaussians, T={saved.num_frames}) as {opts.format}: "
          f"{len(timeline.times)} frames at {fps:g} fps to {out}", file=sys.stderr)
    if opts.format == "glb":
        surface = export_glb(saved.model, timeline, out, opts, saved, progress)
        written = [out]
        summary = f"{len(surface.vertices)} vertices, {surface.num_faces} faces, {len(timeline.times)} morph targets"
    else:
        written = export_sequence(saved.model, timeline, out, opts.format, saved, progress=progress)
        summary = f"{len(timeline.times)} files + {MANIFEST}"
    print(f"wrote {summary}, {_size(written) / 1e6:.2f} MB in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if opts.check and opts.format == "glb":
        report, extra = check_glb(out, saved.model, cfg, opts, progress)
        iou, motion, fresh = report["silhouette_iou"], report["motion"], report["reextraction"]
        literal, static = report["nearest_centre"], motion["static_mesh"]
        print(f"check: silhouette IoU min {iou['min']:.3f} mean {iou['mean']:.3f} (>= {iou['threshold']}: "
              f"{'pass' if iou['pass'] else 'FAIL'}); colour PSNR against the Gaussians (texture={opts.texture}) "
              f"{report['color_psnr']['mean']:.2f} dB; motion: vertices drift from their nearest Gaussian centre "
              f"(offset at frame {motion['reference_frame']} taken out) <= {motion['max_relative']:.2%} of the "
              f"object's size, follow ratio {motion['follow_ratio']:.2f} (<= {motion['threshold']:.0%} and "
              f"<= {motion['follow_threshold']:g}: {'pass' if motion['pass'] else 'FAIL'}; frame-0 mesh left in "
              f"place: {static['max_relative']:.2%}, ratio {static['follow_ratio']:.2f}, "
              f"{'pass' if static['pass'] else 'fails'}); the issue's literal measure, mean vertex-to-nearest-"
              f"centre distance: <= {literal['max_relative']:.2%} (frame-0 mesh left in place: "
              f"{literal['static_mesh_max_relative']:.2%}; it includes the surface's offset from the centres); "
              f"distance to the surface re-extracted at frames {fresh['frames']} <= {fresh['max_relative']:.2%} "
              f"(reference mesh left in place: {fresh['static_max_relative']:.2%})", file=sys.stderr)
        written += extra
    elif opts.check and opts.format == "splat":
        worst = check_splats(out, saved.model)
        print("check: largest differences after reading back: " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()),
              file=sys.stderr)
    elif opts.check:
        worst = check_plys(out, saved.model)
        print(f"check: largest difference of any raw value after reading back: {worst:.3g}", file=sys.stderr)
    return written


@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> None:
    config_path, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    cfg, opts = load_settings(config_path, overrides)
    for path in run(cfg, opts):
        print(path)


if __name__ == "__main__":
    main()
