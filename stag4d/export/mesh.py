"""An animated mesh from a 4D Gaussian model: one surface with one topology, moved to every frame.

1. :func:`extract_surface`: the Gaussians' occupancy (of one frame, or canonical) on a grid (:mod:`.occupancy`),
   enclosed cavities filled (scipy), its level set ``density_threshold`` by marching cubes
   (scikit-image), then cleaned (duplicate and
   degenerate faces dropped, parts with fewer than ``min_component`` of the faces removed, faces
   oriented outwards) and decimated to the face budget (trimesh's quadric decimation through
   fast-simplification).
2. :func:`sample_colors`: vertex colours C / A from the same grid pass (the alpha-weighted mean
   colour of the Gaussians around each vertex, SH degree 0), trilinearly interpolated.
3. Motion, one of two ways:

   * :func:`carry_with_gaussians` (``animation=gaussians``, the default): the surface of one frame
     (the reference), each vertex attached to the K Gaussians nearest to it at that frame, weighted
     by their alpha at the vertex, and moved by their weighted displacement from the reference
     frame to every other frame (the deformation field evaluated where it was trained: at the
     Gaussians' centres), the displacements then smoothed over the mesh
     (:func:`smooth_displacements`);
   * :func:`deform_vertices` (``animation=field``): the canonical surface, each vertex moved by the
     field itself, ``v + d_position(v, t)``, as a Gaussian centre there would be. On trained runs
     the canonical Gaussians are not a clean shape (the fine stage deforms every frame; on the
     demo they sit 6% of the object's size from frame 0 on average and are 22% larger), and the
     field cannot be inverted to move a frame's surface back (it folds), so this mode is the
     weaker one; it is kept for comparison (see the README's measurements).

   One topology for all frames, so nothing flickers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import trimesh
from scipy import ndimage, sparse
from scipy.spatial import cKDTree
from skimage import measure
from torch import Tensor

from stag4d.export.occupancy import MIN_OPACITY, GaussianCloud, GridBox, covariances, object_box, occupancy_grid

SKIN_NEIGHBOURS = 16  # Gaussians that carry a vertex
MOTION_SMOOTHING = 10  # half-step neighbour-averaging passes over the vertices' displacements
ANIMATIONS = ("gaussians", "field")


@dataclass
class SurfaceMesh:
    """A triangle mesh in canonical space.

    Attributes:
        vertices [V, 3] float32; faces [F, 3] int64 (counter-clockwise seen from outside);
        colors [V, 3] float32 RGB in [0, 1] (display values, as the Gaussians render them);
        color_field: the colour grid the colours were sampled from (kept to bake a texture).
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    color_field: ColorField | None = None

    @property
    def num_faces(self) -> int:
        return len(self.faces)


class EmptySurface(ValueError):
    """The occupancy never reaches the threshold: there is no surface to extract."""


def fill_cavities(field: np.ndarray, level: float) -> np.ndarray:
    """``field`` with its enclosed cavities (points below ``level`` that the outside cannot reach)
    raised to 1: a hollow shell of Gaussians then gives one outer surface, not also an inner one
    that no camera sees."""
    inside = field >= level
    cavities = ndimage.binary_fill_holes(inside) & ~inside
    return np.where(cavities, np.float32(1.0), field)


def marching_cubes(field: np.ndarray, box: GridBox, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] (world) and faces [F, 3] of the level set ``field == level``, the high
    side inside; faces counter-clockwise seen from outside (glTF's front faces)."""
    if not float(field.max()) > level:
        raise EmptySurface(f"the occupancy peaks at {float(field.max()):.3g}, below the threshold {level:g}")
    vertices, faces, _, _ = measure.marching_cubes(field, level=level, spacing=(box.spacing,) * 3,
                                                   gradient_direction="descent", allow_degenerate=False)
    # skimage's faces are clockwise seen from the low-value side's opposite; flip to CCW outside
    return (vertices + box.origin).astype(np.float32), np.ascontiguousarray(faces[:, ::-1]).astype(np.int64)


def clean(vertices: np.ndarray, faces: np.ndarray, min_component: float) -> trimesh.Trimesh:
    """Merge duplicate vertices, drop degenerate and duplicate faces, keep the connected parts with
    at least ``min_component`` of all faces, orient faces consistently outwards."""
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=True, validate=True)
    if min_component > 0 and len(mesh.faces):
        parts = mesh.split(only_watertight=False)
        keep = [p for p in parts if len(p.faces) >= min_component * len(mesh.faces)]
        if keep and len(keep) < len(parts):
            mesh = trimesh.util.concatenate(keep)
    trimesh.repair.fix_normals(mesh, multibody=True)
    return mesh


def decimate(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """At most ``max_faces`` faces (quadric error decimation); unchanged when already below it or 0."""
    if max_faces <= 0 or len(mesh.faces) <= max_faces:
        return mesh
    simplified = mesh.simplify_quadric_decimation(face_count=int(max_faces))
    simplified = trimesh.Trimesh(simplified.vertices, simplified.faces, process=True, validate=True)
    trimesh.repair.fix_normals(simplified, multibody=True)
    return simplified


def sample_grid(grid: Tensor, box: GridBox, points: Tensor) -> Tensor:
    """Trilinear samples [P, C] of a grid [X, Y, Z, C] at world points [P, 3] (edge values outside)."""
    size = torch.tensor(box.shape, dtype=torch.float32, device=points.device)
    index = (points - torch.as_tensor(box.origin, dtype=torch.float32, device=points.device)) / box.spacing
    coords = 2.0 * index / (size - 1) - 1.0  # align_corners=True: -1 and 1 are the first and last points
    # grid_sample wants [N, C, D, H, W] indexed by (x -> W, y -> H, z -> D): put the grid's x last
    volume = grid.permute(3, 2, 1, 0).unsqueeze(0)
    out = torch.nn.functional.grid_sample(volume, coords.view(1, -1, 1, 1, 3).to(volume), mode="bilinear",
                                          padding_mode="border", align_corners=True)
    return out.view(grid.shape[-1], -1).T


def sample_colors(color_grid: Tensor, box: GridBox, vertices: np.ndarray) -> np.ndarray:
    """Vertex colours [V, 3] in [0, 1]: C / A of the colour grid [X, Y, Z, 4] at the vertices (trilinear)."""
    points = torch.as_tensor(vertices, dtype=torch.float32, device=color_grid.device)
    sampled = sample_grid(color_grid, box, points)
    colors = sampled[:, :3] / sampled[:, 3:].clamp_min(1e-8)
    return colors.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


@dataclass
class ColorField:
    """The colour grid [X, Y, Z, 4] (C, A) of :func:`.occupancy.occupancy_grid` on its ``box``."""

    grid: Tensor
    box: GridBox

    def at(self, points: np.ndarray) -> np.ndarray:
        """Colours [P, 3] in [0, 1] at world points, as :func:`sample_colors`."""
        return sample_colors(self.grid, self.box, points)


def extract_surface(cloud: GaussianCloud, resolution: int, density_threshold: float, max_faces: int,
                    min_component: float, bounds: float | None = None, progress: bool = True,
                    keep_colors: bool = False) -> SurfaceMesh:
    """The coloured, cleaned, decimated surface ``occupancy == density_threshold`` of ``cloud``
    (with its colour grid when ``keep_colors``, for baking a texture)."""
    box = object_box(cloud, resolution, bounds)
    occupancy, color_grid = occupancy_grid(cloud, box, progress=progress)
    field = fill_cavities(occupancy.cpu().numpy(), density_threshold)
    vertices, faces = marching_cubes(field, box, density_threshold)
    mesh = decimate(clean(vertices, faces, min_component), max_faces)
    if not len(mesh.faces):
        raise EmptySurface("no faces are left after cleaning; lower min_component or density_threshold")
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    return SurfaceMesh(vertices, np.asarray(mesh.faces, dtype=np.int64), sample_colors(color_grid, box, vertices),
                       ColorField(color_grid, box) if keep_colors else None)


@torch.no_grad()
def deform_vertices(model, vertices: np.ndarray, times: Sequence[float], chunk_points: int = 65536,
                    chunk_times: int = 8) -> np.ndarray:
    """Positions [F, V, 3] of canonical points at each time: ``v + d_position(v, t)`` (the position
    head of the model's deformation field, as for a Gaussian centre at v)."""
    field = model.deformation
    device = model.device
    points = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    out = np.empty((len(times), len(vertices), 3), dtype=np.float32)
    for t0 in range(0, len(times), chunk_times):
        batch = torch.tensor([float(t) for t in times[t0:t0 + chunk_times]], dtype=torch.float32, device=device)
        for p0 in range(0, len(points), chunk_points):
            xyz = points[p0:p0 + chunk_points]
            moved = xyz.unsqueeze(0) + field.position_head(field.hidden(xyz, batch))
            out[t0:t0 + len(batch), p0:p0 + len(xyz)] = moved.cpu().numpy()
    return out


@dataclass
class Skinning:
    """Each vertex's K Gaussians (indices [V, K]) and normalized weights [V, K]."""

    indices: Tensor
    weights: Tensor


@torch.no_grad()
def skin_to_gaussians(vertices: np.ndarray, cloud: GaussianCloud, neighbours: int = SKIN_NEIGHBOURS) -> Skinning:
    """Attach each vertex to its ``neighbours`` nearest visible Gaussian centres, weighted by each
    Gaussian's alpha at the vertex, o exp(-0.5 (v - mu)^T Sigma^-1 (v - mu)) (plus 1e-6 / distance,
    so that a vertex no kernel reaches still follows its nearest centres)."""
    visible = torch.nonzero(cloud.opacities >= MIN_OPACITY).squeeze(1)
    k = min(neighbours, len(visible))
    distance, nearest = cKDTree(cloud.means[visible].cpu().numpy()).query(vertices, k=k)
    distance, nearest = distance.reshape(len(vertices), k), nearest.reshape(len(vertices), k)
    indices = visible[torch.as_tensor(nearest, device=visible.device)]
    points = torch.as_tensor(vertices, dtype=torch.float32, device=cloud.means.device)
    offset = points.unsqueeze(1) - cloud.means[indices]
    precision = torch.linalg.inv(covariances(cloud))
    mahalanobis = torch.einsum("vki,vkij,vkj->vk", offset, precision[indices], offset)
    weights = cloud.opacities[indices] * torch.exp(-0.5 * mahalanobis)
    weights = weights + 1e-6 / (torch.as_tensor(distance, dtype=torch.float32, device=weights.device) + 1e-6)
    return Skinning(indices, weights / weights.sum(dim=1, keepdim=True))


@torch.no_grad()
def carry_with_gaussians(model, vertices: np.ndarray, skinning: Skinning, reference_time: float,
                         times: Sequence[float], chunk_times: int = 8) -> np.ndarray:
    """Positions [F, V, 3]: ``v + sum_k w_k (mu_k(t) - mu_k(t_ref))`` for each time t, with the
    Gaussian centres mu of the model's deformation."""
    reference = model.gaussians_at(float(reference_time)).means[skinning.indices]  # [V, K, 3]
    out = np.empty((len(times), len(vertices), 3), dtype=np.float32)
    for t0 in range(0, len(times), chunk_times):
        batch = [float(t) for t in times[t0:t0 + chunk_times]]
        for offset, gaussians in enumerate(model.gaussians_at_times(batch)):
            moved = (skinning.weights.unsqueeze(-1) * (gaussians.means[skinning.indices] - reference)).sum(dim=1)
            out[t0 + offset] = vertices + moved.cpu().numpy()
    return out


def smooth_displacements(positions: np.ndarray, faces: np.ndarray, reference: int,
                         iterations: int = MOTION_SMOOTHING) -> np.ndarray:
    """Positions [F, V, 3] whose displacements from frame ``reference`` are averaged with their mesh
    neighbours' ``iterations`` times (d <- (d + mean of the neighbours' d) / 2).

    Single Gaussians of a trained model move somewhat independently; carried vertices inherit
    that and the surface crumples (on the demo, up to 9% more area at some frames, seen as dark
    creases under shading). Smoothing the motion, not the shape, leaves the reference frame and
    any rigid or slowly varying motion as they were."""
    if iterations <= 0:
        return positions
    edges = trimesh.Trimesh(positions[reference], faces, process=False).edges_unique
    num = positions.shape[1]
    rows, cols = np.concatenate([edges[:, 0], edges[:, 1]]), np.concatenate([edges[:, 1], edges[:, 0]])
    adjacency = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(num, num))
    degree = np.maximum(np.asarray(adjacency.sum(axis=1)).ravel(), 1.0)
    mean_of_neighbours = sparse.diags(1.0 / degree) @ adjacency
    out = np.empty_like(positions)
    for k, frame in enumerate(positions):
        displacement = (frame - positions[reference]).astype(np.float64)
        for _ in range(iterations):
            displacement = 0.5 * (displacement + mean_of_neighbours @ displacement)
        out[k] = positions[reference] + displacement.astype(np.float32)
    return out


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals [V, 3] float32 (outward for outward-facing faces)."""
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False, validate=False)
    return np.asarray(mesh.vertex_normals, dtype=np.float32)


__all__ = [
    "ANIMATIONS",
    "MOTION_SMOOTHING",
    "ColorField",
    "SKIN_NEIGHBOURS",
    "EmptySurface",
    "Skinning",
    "SurfaceMesh",
    "carry_with_gaussians",
    "clean",
    "decimate",
    "deform_vertices",
    "extract_surface",
    "fill_cavities",
    "marching_cubes",
    "sample_colors",
    "sample_grid",
    "skin_to_gaussians",
    "smooth_displacements",
    "vertex_normals",
]
