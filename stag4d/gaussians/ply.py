"""3D Gaussian Splatting PLY files: arrays <-> file.

One ``vertex`` element, float32 properties in this order (the 3DGS layout, raw values):
``x y z nx ny nz f_dc_0..2 f_rest_0..(3(K-1)-1) opacity scale_0..2 rot_0..3``, with
``f_dc_c = sh[:, 0, c]``, ``f_rest_{c (K-1) + k} = sh[:, 1 + k, c]`` (channel-major, as 3DGS),
``opacity`` the logit, ``scale_i`` the log-scale, ``rot`` the quaternion (w, x, y, z). Normals are
written as zeros and ignored on reading. Files are written atomically (:func:`stag4d.files.atomic_path`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
from plyfile import PlyData, PlyElement

from stag4d.errors import DataError
from stag4d.files import atomic_path


@dataclass
class GaussianArrays:
    """Raw parameters of N Gaussians as float32 numpy arrays.

    Attributes:
        means: [N, 3]. sh_dc: [N, 1, 3]. sh_rest: [N, K-1, 3] (K = (degree + 1)^2).
        opacity_logits: [N]. log_scales: [N, 3]. quats: [N, 4] (w, x, y, z).
    """

    means: np.ndarray
    sh_dc: np.ndarray
    sh_rest: np.ndarray
    opacity_logits: np.ndarray
    log_scales: np.ndarray
    quats: np.ndarray

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expected = {"means": (n, 3), "sh_dc": (n, 1, 3), "opacity_logits": (n,), "log_scales": (n, 3), "quats": (n, 4)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"GaussianArrays.{name} has shape {getattr(self, name).shape}, expected {shape}")
        if self.sh_rest.ndim != 3 or self.sh_rest.shape[0] != n or self.sh_rest.shape[2] != 3:
            raise ValueError(f"GaussianArrays.sh_rest has shape {self.sh_rest.shape}, expected ({n}, K-1, 3)")
        sh_degree_from_rest(self.sh_rest.shape[1])

    @property
    def num(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_rest(self.sh_rest.shape[1])


def sh_degree_from_rest(num_rest: int) -> int:
    """SH degree from the number of non-DC coefficients per channel (0, 3, 8 or 15)."""
    for degree in range(4):
        if (degree + 1) ** 2 - 1 == num_rest:
            return degree
    raise ValueError(f"{num_rest} non-DC SH coefficients per channel; expected 0, 3, 8 or 15")


def attribute_names(num_rest: int) -> list[str]:
    """PLY property names for ``num_rest`` non-DC SH coefficients per channel."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * num_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def write_gaussian_ply(path: str, gaussians: GaussianArrays) -> None:
    """Write ``gaussians`` as a binary little-endian 3DGS PLY at ``path`` (atomically)."""

    n = gaussians.num
    num_rest = gaussians.sh_rest.shape[1]
    columns = np.concatenate(
        [
            gaussians.means.reshape(n, 3),
            np.zeros((n, 3), dtype=np.float32),
            gaussians.sh_dc.reshape(n, 3),
            np.transpose(gaussians.sh_rest, (0, 2, 1)).reshape(n, 3 * num_rest),
            gaussians.opacity_logits.reshape(n, 1),
            gaussians.log_scales.reshape(n, 3),
            gaussians.quats.reshape(n, 4),
        ],
        axis=1,
    ).astype(np.float32)
    names = attribute_names(num_rest)
    # the rows of the contiguous float32 table already are the PLY's records: a view, no copy
    vertices = np.ascontiguousarray(columns, dtype="<f4").view([(name, "<f4") for name in names]).reshape(n)
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertices, "vertex")], byte_order="<").write(tmp)


def read_gaussian_ply(path: str) -> GaussianArrays:
    """Read a 3DGS PLY (any SH degree 0..3). Raises DataError naming the file and the problem."""

    if not os.path.isfile(path):
        raise DataError(f"{path}: PLY file not found; give the folder of a saved model (model.ply + deformation.pt)")
    try:
        ply = PlyData.read(path)
        vertex = ply["vertex"]
    except Exception as err:  # plyfile raises several classes for malformed files
        raise DataError(f"{path}: not a readable PLY with a 'vertex' element ({type(err).__name__}); re-export it") from err
    names = {prop.name for prop in vertex.properties}
    rest_names = sorted((name for name in names if name.startswith("f_rest_")),
                        key=lambda name: int(re.sub(r"\D", "", name) or 0))
    required = [name for name in attribute_names(0) if not name.startswith("n")]
    missing = [name for name in required if name not in names]
    if missing:
        raise DataError(f"{path}: missing PLY properties {missing}; expected a 3D Gaussian Splatting PLY")
    if len(rest_names) % 3 != 0:
        raise DataError(f"{path}: {len(rest_names)} f_rest_* properties, not a multiple of 3; the file is damaged")
    num_rest = len(rest_names) // 3
    try:
        sh_degree_from_rest(num_rest)
    except ValueError as err:
        raise DataError(f"{path}: {err}; expected SH degree 0..3") from err
    n = vertex.count

    def stack(keys: list[str]) -> np.ndarray:
        if not keys:
            return np.zeros((n, 0), dtype=np.float32)
        return np.stack([np.asarray(vertex[key], dtype=np.float32) for key in keys], axis=1)

    sh_rest = stack(rest_names).reshape(n, 3, num_rest).transpose(0, 2, 1)
    return GaussianArrays(
        means=stack(["x", "y", "z"]),
        sh_dc=stack(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        sh_rest=np.ascontiguousarray(sh_rest),
        opacity_logits=np.asarray(vertex["opacity"], dtype=np.float32),
        log_scales=stack(["scale_0", "scale_1", "scale_2"]),
        quats=stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
    )
