"""Measure an exported animated mesh against the Gaussians it came from.

* Geometry: at each exported time, the mesh's silhouette (our z-buffer rasterizer,
  :mod:`.mesh_render`) against the Gaussians' ``alpha > 0.5`` (the project's rasterizer) at the
  reference camera and every anchor camera of the run: mask IoU. Colour (reported): the mesh's
  colours (vertex colours or texture, unshaded) against the Gaussians' where both cover a pixel: PSNR.
* Motion (the check): each vertex paired with the visible Gaussian (opacity >= 1/255) whose centre
  is nearest to it at the reference frame (where the mesh was extracted); at each exported time,
  the mean over the vertices of ``|(v(t) - v(ref)) - (mu(t) - mu(ref))|``, how far each vertex has
  drifted from its nearest Gaussian centre, as a fraction of the object's size (the longest side
  of the mesh's bounding box at that time). It is the issue's vertex-to-nearest-centre distance
  with the offset that the vertex has at the reference frame taken out as a vector: the surface
  sits about one Gaussian radius outside the centres (the Gaussians' alpha = 0.5 silhouette, which
  the geometry check asks for), and on the demo that offset, not motion, is what the raw distance
  measures (3.3% animated, 3.7% unmoved; README). Passes when the drift stays within
  ``MOTION_MAX`` of the object's size at every time and, summed over the times, is at most
  ``FOLLOW_MAX`` of the distance the same Gaussians moved (``follow_ratio``; a mesh left in place
  scores exactly 1 however small the motion, so it always fails). The control: the frame-0 mesh
  left in place, measured the same way from frame 0.
* The issue's literal measure, reported beside it: the mean distance from the vertices to the
  nearest deformed Gaussian centre at each time, with the frame-0 mesh left in place as control.
* Motion against re-extraction: at a few times, the surface extracted afresh from that time's
  Gaussians, and the symmetric mean distance (chamfer, points sampled evenly on both surfaces)
  between it and the animated mesh, as a fraction of the object's size; again with the
  reference-frame mesh left in place as the control.
* :func:`mesh_contact_sheet`: the mesh rendered at a few times (rows) and azimuths (columns).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree
from tqdm import tqdm

from cam_utils import Camera, CameraConfig
from stag4d.data import video
from stag4d.evaluation.metrics import mask_iou
from stag4d.export.mesh_render import rasterize
from stag4d.export.occupancy import MIN_OPACITY
from stag4d.rasterizer import render

IOU_MIN = 0.85  # the bar for the silhouette IoU
MOTION_MAX = 0.02  # ... and for the mean vertex-to-Gaussian distance, as a fraction of the object's size
# a mesh must also take away at least half of the drift that standing still leaves: on the demo an
# unmoved mesh drifts 2.5% at most (its motion is small), the animated one 1.0% (follow ratio 0.41)
FOLLOW_MAX = 0.5
STILL = 1e-3  # motion below this fraction of the object's size (mean over times) is no motion to follow
CHAMFER_SAMPLES = 20000  # points sampled on each surface for the surface distance


@dataclass
class NamedCamera:
    name: str
    camera: Camera


def check_cameras(camera: CameraConfig, ref_size: int, anchor_size: int, device: torch.device | str = "cpu"
                  ) -> list[NamedCamera]:
    """The reference camera and the anchor cameras of a run."""
    cameras = [NamedCamera("reference", camera.reference(ref_size, device=device))]
    cameras += [NamedCamera(f"anchor{k}", c) for k, c in enumerate(camera.anchors(anchor_size, device=device))]
    return cameras


@torch.no_grad()
def compare_renders(model, positions: np.ndarray, faces: np.ndarray, times: Sequence[float],
                    cameras: Sequence[NamedCamera], backend: str = "auto", progress: bool = True,
                    colors: Optional[np.ndarray] = None, uvs: Optional[np.ndarray] = None,
                    texture: Optional[np.ndarray] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """IoU [F, C] of the mesh's silhouette (``positions[f]``, ``faces``) and the Gaussians' alpha > 0.5
    at ``times[f]`` seen by each camera; with colours (vertex ``colors``, or ``uvs`` and a
    ``texture``) also the colour PSNR [F, C] (dB) where both cover the pixel: the mesh unshaded
    against the Gaussians' colour C / alpha (not blended with a background)."""
    device = model.device
    faces_t = torch.as_tensor(faces, device=device)
    colors_t = None if colors is None else torch.as_tensor(colors, device=device)
    uvs_t = None if uvs is None else torch.as_tensor(uvs, device=device)
    texture_t = None if texture is None else torch.as_tensor(np.array(texture), device=device)
    coloured = colors_t is not None or texture_t is not None
    black = torch.zeros(3, device=device)
    ious = np.zeros((len(times), len(cameras)))
    psnr = np.zeros((len(times), len(cameras))) if coloured else None
    for f, time in enumerate(tqdm(times, desc="silhouettes", unit="frame", disable=not progress, leave=False)):
        gaussians = model.gaussians_at(float(time))
        vertices = torch.as_tensor(positions[f], device=device)
        for c, named in enumerate(cameras):
            rendered = render(gaussians, named.camera.with_time(float(time)), black, backend=backend)
            alpha = rendered.alpha[0]
            mesh = rasterize(vertices, faces_t, named.camera, colors_t, shading=0.0, uvs=uvs_t, texture=texture_t)
            ious[f, c] = float(mask_iou(mesh.mask.float().cpu(), alpha.cpu()))
            if coloured:
                both = mesh.mask & (alpha > 0.5)
                gaussian_rgb = (rendered.image / alpha.clamp_min(1e-6)).clamp(0.0, 1.0)
                error = float(((mesh.image - gaussian_rgb)[:, both] ** 2).mean()) if bool(both.any()) else 1.0
                psnr[f, c] = -10.0 * np.log10(max(error, 1e-10))
    return ious, psnr


def silhouette_ious(model, positions: np.ndarray, faces: np.ndarray, times: Sequence[float],
                    cameras: Sequence[NamedCamera], backend: str = "auto", progress: bool = True) -> np.ndarray:
    """IoU [F, C] of the mesh's silhouette and the Gaussians' alpha > 0.5 (:func:`compare_renders`)."""
    return compare_renders(model, positions, faces, times, cameras, backend, progress)[0]


def visible_centres(model, times: Sequence[float], chunk: int = 8) -> np.ndarray:
    """Deformed centres [F, N', 3] (float64) of the Gaussians with opacity >= 1/255 at each time."""
    visible = model.opacities >= MIN_OPACITY
    out = []
    with torch.no_grad():
        for t0 in range(0, len(times), chunk):
            for gaussians in model.gaussians_at_times([float(t) for t in times[t0:t0 + chunk]]):
                out.append(gaussians.means[visible].double().cpu().numpy())
    return np.stack(out)


def object_size(vertices: np.ndarray) -> float:
    """The object's size at one time, the scale of every distance check: the longest side of the
    box of the mesh's vertices [V, 3]."""
    return float(np.ptp(vertices, axis=0).max())


def nearest_centre_distances(centres: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The issue's measure. Per time f: ``mean`` distance from the vertices ``positions[f]`` to the
    nearest of ``centres[f]``, the object ``size`` (longest side of the mesh's box), and
    ``static``: the same mean for the frame-0 vertices (the mesh not animated)."""
    means, static, sizes = [], [], []
    for f in range(len(positions)):
        tree = cKDTree(centres[f])
        means.append(tree.query(positions[f])[0].mean())
        static.append(tree.query(positions[0])[0].mean())
        sizes.append(object_size(positions[f]))
    return {"mean": np.array(means), "static": np.array(static), "size": np.array(sizes)}


def drift_distances(centres: np.ndarray, positions: np.ndarray, reference: int) -> dict[str, np.ndarray]:
    """The motion check. Each vertex paired with its nearest centre at ``reference``; per time f:
    ``mean`` of ``|(v_f - v_ref) - (mu_f - mu_ref)|`` over the vertices (0 at the reference),
    ``motion``: the mean ``|mu_f - mu_ref|`` of the paired centres (what a mesh left in place would
    score), and the object ``size``."""
    pair = cKDTree(centres[reference]).query(positions[reference])[1]
    moved = centres[:, pair] - centres[reference, pair]  # [F, V, 3]
    drift = (positions - positions[reference]) - moved
    return {"mean": np.linalg.norm(drift, axis=-1).mean(axis=1), "motion": np.linalg.norm(moved, axis=-1).mean(axis=1),
            "size": np.array([object_size(p) for p in positions])}


def follow_ratio(drift: dict[str, np.ndarray]) -> float:
    """Summed drift over summed motion (0: follows exactly; 1: as far off as standing still); 0
    when the Gaussians do not move (mean motion below ``STILL`` of the object's size)."""
    motion = float((drift["motion"] / drift["size"]).mean())
    return float(drift["mean"].sum() / drift["motion"].sum()) if motion >= STILL else 0.0


def surface_distance(vertices_a: np.ndarray, faces_a: np.ndarray, vertices_b: np.ndarray, faces_b: np.ndarray,
                     samples: int = CHAMFER_SAMPLES, seed: int = 0) -> float:
    """Symmetric mean distance between two triangle meshes: points sampled on each (area-uniform,
    seeded), each to the nearest point sampled on the other, averaged both ways."""
    a = trimesh.sample.sample_surface(trimesh.Trimesh(vertices_a, faces_a, process=False), samples, seed=seed)[0]
    b = trimesh.sample.sample_surface(trimesh.Trimesh(vertices_b, faces_b, process=False), samples, seed=seed + 1)[0]
    return 0.5 * float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def reextraction_distances(positions: np.ndarray, faces: np.ndarray, frames: Sequence[int], reference: int,
                           extract: Callable[[int], tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """For each frame k of ``frames``: the surface distance between the animated mesh
    (``positions[k]``) and ``extract(k)`` (vertices, faces extracted afresh at that frame), and the
    same for the ``reference`` frame's mesh left in place; with the object's size at k."""
    animated, static, sizes = [], [], []
    for k in frames:
        vertices, fresh_faces = extract(k)
        animated.append(surface_distance(positions[k], faces, vertices, fresh_faces))
        static.append(surface_distance(positions[reference], faces, vertices, fresh_faces))
        sizes.append(object_size(positions[k]))
    return {"mean": np.array(animated), "static": np.array(static), "size": np.array(sizes)}


def mesh_contact_sheet(positions: np.ndarray, faces: np.ndarray, colors: np.ndarray, rows: Sequence[int],
                       labels: Sequence[str], azimuths: Sequence[float], camera: CameraConfig, size: int,
                       uvs: Optional[np.ndarray] = None, texture: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8 image: the mesh at frames ``rows`` (one row each, labelled) seen from ``azimuths``
    (coloured by the texture when given, else by the vertex colours)."""
    faces_t = torch.as_tensor(faces)
    colors_t = torch.as_tensor(colors)
    uvs_t = None if uvs is None else torch.as_tensor(uvs)
    texture_t = None if texture is None else torch.as_tensor(texture)
    tiles = np.stack([
        np.stack([video.to_uint8(rasterize(torch.as_tensor(positions[r]), faces_t, camera.orbit(0.0, a, size),
                                           colors_t, uvs=uvs_t, texture=texture_t).image) for a in azimuths])
        for r in rows])
    return video.contact_sheet(tiles, list(labels), [f"azimuth {a:g}" for a in azimuths])


def drift_summary(drift: dict[str, np.ndarray], reference: int) -> dict:
    """The motion check's verdict and numbers for one mesh (JSON-able)."""
    relative = drift["mean"] / drift["size"]
    ratio = follow_ratio(drift)
    return {"reference_frame": reference, "max_relative": float(relative.max()),
            "mean_relative": float(relative.mean()), "follow_ratio": ratio,
            "pass": bool(relative.max() <= MOTION_MAX and ratio <= FOLLOW_MAX),
            "per_frame_relative": relative.round(5).tolist(),
            "gaussian_motion_relative": (drift["motion"] / drift["size"]).round(5).tolist()}


def summarize(ious: np.ndarray, camera_names: Sequence[str], drift: dict[str, np.ndarray], reference: int,
              static_drift: dict[str, np.ndarray], nearest: dict[str, np.ndarray], times: Sequence[float],
              reextraction: Optional[dict] = None, reextraction_frames: Sequence[int] = (),
              psnr: Optional[np.ndarray] = None) -> dict:
    """The checks' numbers as a JSON-able dict (per frame and per camera, and the worst cases).

    ``drift``: :func:`drift_distances` of the animated mesh from ``reference``; ``static_drift``:
    the same for the frame-0 mesh left in place, from frame 0 (the control, which must fail);
    ``nearest``: :func:`nearest_centre_distances` (the issue's literal measure, reported)."""
    relative = nearest["mean"] / nearest["size"]
    static = nearest["static"] / nearest["size"]
    motion = drift_summary(drift, reference)
    motion.update({"threshold": MOTION_MAX, "follow_threshold": FOLLOW_MAX,
                   "static_mesh": drift_summary(static_drift, 0)})
    out = {
        "silhouette_iou": {
            "min": float(ious.min()), "mean": float(ious.mean()), "pass": bool(ious.min() >= IOU_MIN),
            "threshold": IOU_MIN, "cameras": list(camera_names), "per_frame": ious.round(4).tolist(),
        },
        "motion": motion,
        "nearest_centre": {
            "max_relative": float(relative.max()), "mean_relative": float(relative.mean()),
            "within_threshold": bool(relative.max() <= MOTION_MAX), "threshold": MOTION_MAX,
            "per_frame_relative": relative.round(5).tolist(), "per_frame_distance": nearest["mean"].round(6).tolist(),
            "object_size": nearest["size"].round(5).tolist(),
            "static_mesh_max_relative": float(static.max()), "static_per_frame_relative": static.round(5).tolist(),
        },
        "times": [float(t) for t in times],
    }
    if psnr is not None:
        out["color_psnr"] = {"mean": float(psnr.mean()), "min": float(psnr.min()),
                             "per_camera": psnr.mean(axis=0).round(3).tolist()}
    if reextraction is not None:
        fresh = reextraction["mean"] / reextraction["size"]
        fresh_static = reextraction["static"] / reextraction["size"]
        out["reextraction"] = {
            "frames": list(reextraction_frames), "max_relative": float(fresh.max()),
            "per_frame_relative": fresh.round(5).tolist(), "static_per_frame_relative": fresh_static.round(5).tolist(),
            "static_max_relative": float(fresh_static.max()),
        }
    return out


__all__ = ["CHAMFER_SAMPLES", "FOLLOW_MAX", "IOU_MIN", "MOTION_MAX", "STILL", "NamedCamera", "check_cameras",
           "compare_renders",
           "drift_distances", "drift_summary", "follow_ratio", "mesh_contact_sheet", "nearest_centre_distances", "object_size",
           "reextraction_distances", "silhouette_ious", "summarize", "surface_distance", "visible_centres"]
