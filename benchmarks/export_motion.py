"""The export's motion measures for a few ways of making the animated mesh (the README's table).

    python benchmarks/export_motion.py --config configs/demo.yaml                  # the demo, every row
    python benchmarks/export_motion.py --config configs/anchored.yaml path=.data/minions save_path=m \\
        --rows default,t0.3,k1 --device cuda

Each row extracts the surface of the middle frame (or the canonical one for ``field``), animates
it, and measures it at every frame of the run as ``scripts/export.py check=true`` does (nothing is
written): the silhouette IoU at the reference and anchor cameras; the issue's literal measure
(mean distance from the vertices to the nearest deformed Gaussian centre) for the animated mesh and
the frame-0 mesh left in place; the same to the nearest Gaussian's 1-sigma ellipsoid instead of
its centre (the radial distance to the ellipsoid, 0 inside; the 16 nearest centres searched); the
kept motion check (drift from the nearest centre with the reference offset taken out, and the
follow ratio; see :mod:`stag4d.export.checks`) for both; the distance to the surface re-extracted
at 4 frames (animated and unmoved); and the literal measure of those re-extracted surfaces
themselves, the best any surface of that threshold could score. Values are % of the object's size,
the worst frame.

Rows: ``default`` (density_threshold 0.5, each vertex carried by its 16 nearest Gaussians, motion
smoothed), ``t<D>`` (another density_threshold), ``k1`` (carried by the nearest Gaussian alone, not
smoothed), ``nosmooth`` (16 Gaussians, not smoothed), ``field`` (canonical surface moved by the
deformation field).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from scipy.spatial import cKDTree

from stag4d.config import load_config
from stag4d.device import resolve_device
from stag4d.evaluation.saved_model import open_saved_model
from stag4d.evaluation.visualize import sheet_frame_indices
from stag4d.export import checks, mesh
from stag4d.export.occupancy import MIN_OPACITY, GaussianCloud, covariances

ALL_ROWS = "default,t0.3,t0.6,t0.7,t0.8,t0.9,t0.95,k1,nosmooth,field"
ELLIPSOID_NEIGHBOURS = 16


def ellipsoid_distance(cloud: GaussianCloud, points: np.ndarray, sigmas: float = 1.0) -> np.ndarray:
    """Per point, the radial distance to the nearest visible Gaussian's ``sigmas`` ellipsoid (0 inside):
    ``|p - mu| (1 - sigmas / m)`` with m the Mahalanobis radius, the least over the nearest centres."""
    visible = torch.nonzero(cloud.opacities >= MIN_OPACITY).squeeze(1)
    k = min(ELLIPSOID_NEIGHBOURS, len(visible))
    nearest = cKDTree(cloud.means[visible].cpu().numpy()).query(points, k=k)[1].reshape(len(points), k)
    index = visible[torch.as_tensor(nearest, device=visible.device)]
    offset = torch.as_tensor(points, dtype=torch.float32, device=visible.device).unsqueeze(1) - cloud.means[index]
    precision = torch.linalg.inv(covariances(cloud))[index]
    radius = torch.einsum("vki,vkij,vkj->vk", offset, precision, offset).clamp_min(1e-12).sqrt()
    return (offset.norm(dim=-1) * (1.0 - sigmas / radius).clamp_min(0.0)).amin(dim=1).cpu().numpy()


def animate(model, clouds, times, row: str, resolution: int, max_faces: int, bounds):
    """(surface, positions [F, V, 3], reference frame, threshold) of one row."""
    threshold = float(row[1:]) if row.startswith("t") else 0.5
    reference = len(times) // 2
    if row == "field":
        with torch.no_grad():
            cloud = GaussianCloud.from_params(model.gaussians_at(None))
        surface = mesh.extract_surface(cloud, resolution, threshold, max_faces, 0.01, bounds=bounds, progress=False)
        return surface, mesh.deform_vertices(model, surface.vertices, times), 0, threshold
    surface = mesh.extract_surface(clouds[reference], resolution, threshold, max_faces, 0.01, bounds=bounds,
                                   progress=False)
    neighbours = 1 if row == "k1" else mesh.SKIN_NEIGHBOURS
    smoothing = 0 if row in ("k1", "nosmooth") else mesh.MOTION_SMOOTHING
    skinning = mesh.skin_to_gaussians(surface.vertices, clouds[reference], neighbours)
    positions = mesh.carry_with_gaussians(model, surface.vertices, skinning, times[reference], times)
    return surface, mesh.smooth_displacements(positions, surface.faces, reference, smoothing), reference, threshold


def measure(model, cfg, clouds, times, row: str, resolution: int, max_faces: int, backend: str) -> dict:
    started = time.perf_counter()
    bounds = model.deformation.cfg.bounds
    surface, positions, reference, threshold = animate(model, clouds, times, row, resolution, max_faces, bounds)
    cameras = checks.check_cameras(cfg.camera, cfg.data.ref_size, cfg.data.anchor_size, model.device)
    ious = checks.silhouette_ious(model, positions, surface.faces, times, cameras, backend, progress=False)
    centres = checks.visible_centres(model, times)
    nearest = checks.nearest_centre_distances(centres, positions)
    size = nearest["size"]
    unmoved = np.repeat(positions[:1], len(times), axis=0)
    drift = checks.drift_distances(centres, positions, reference)
    still = checks.drift_distances(centres, unmoved, 0)
    ellipsoid = np.array([ellipsoid_distance(c, p).mean() for c, p in zip(clouds, positions)]) / size
    ellipsoid_still = np.array([ellipsoid_distance(c, positions[0]).mean() for c in clouds]) / size
    frames = sheet_frame_indices(len(times), 4)
    fresh_literal = []

    def extract(k: int):
        fresh = mesh.extract_surface(clouds[k], resolution, threshold, max_faces, 0.01, bounds=bounds, progress=False)
        centre_tree = cKDTree(centres[k])
        fresh_literal.append(centre_tree.query(fresh.vertices)[0].mean() / checks.object_size(fresh.vertices))
        return fresh.vertices, fresh.faces

    reextraction = checks.reextraction_distances(positions, surface.faces, frames, reference, extract)
    return {
        "row": row, "iou_min": ious.min(), "iou_mean": ious.mean(),
        "literal": (nearest["mean"] / size).max(), "literal_still": (nearest["static"] / size).max(),
        "fresh_literal": max(fresh_literal),
        "ellipsoid": ellipsoid.max(), "ellipsoid_still": ellipsoid_still.max(),
        "drift": (drift["mean"] / drift["size"]).max(), "ratio": checks.follow_ratio(drift),
        "drift_still": (still["mean"] / still["size"]).max(), "ratio_still": checks.follow_ratio(still),
        "reextraction": (reextraction["mean"] / reextraction["size"]).max(),
        "reextraction_still": (reextraction["static"] / reextraction["size"]).max(),
        "seconds": time.perf_counter() - started,
    }


def format_row(r: dict) -> str:
    pct = "{:.2f}".format
    return (f"| {r['row']} | {r['iou_min']:.3f} / {r['iou_mean']:.3f} | {pct(100 * r['literal'])} / "
            f"{pct(100 * r['literal_still'])} | {pct(100 * r['fresh_literal'])} | {pct(100 * r['ellipsoid'])} / "
            f"{pct(100 * r['ellipsoid_still'])} | {pct(100 * r['drift'])}, {r['ratio']:.2f} / "
            f"{pct(100 * r['drift_still'])}, {r['ratio_still']:.2f} | {pct(100 * r['reextraction'])} / "
            f"{pct(100 * r['reextraction_still'])} | {r['seconds']:.0f} |")


HEADER = ("| row | IoU min / mean | literal: animated / frame 0 unmoved | literal, re-extracted surfaces | "
          "1-sigma ellipsoid: animated / unmoved | drift, ratio: animated / unmoved | re-extraction: animated / "
          "unmoved | s |\n|---|---|---|---|---|---|---|---|")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--rows", default=ALL_ROWS, help="comma-separated rows (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: the config's)")
    parser.add_argument("--resolution", type=int, default=192)
    parser.add_argument("--max-faces", type=int, default=50000)
    parser.add_argument("overrides", nargs="*", help="run-config overrides (key=value)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides, require_path=False)
    saved = open_saved_model(cfg, None, resolve_device(args.device or cfg.train.device))
    model = saved.model
    times = [i / saved.num_frames for i in range(saved.num_frames)]
    with torch.no_grad():
        clouds = [GaussianCloud.from_params(g) for g in model.gaussians_at_times(times)]
    print(f"{saved.folder}: {model.num} Gaussians, T = {len(times)}", file=sys.stderr)
    print(HEADER, flush=True)
    for row in args.rows.split(","):
        print(format_row(measure(model, cfg, clouds, times, row, args.resolution, args.max_faces, cfg.train.backend)),
              flush=True)


if __name__ == "__main__":
    main()
