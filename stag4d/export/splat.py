"""The ``.splat`` format of the common web Gaussian-splat viewers: 32 bytes per Gaussian, no header.

Per Gaussian, little-endian:

====== ======= ==============================================================================
bytes  type    value
====== ======= ==============================================================================
0-11   3 f32   position x, y, z
12-23  3 f32   scale: the standard deviations exp(log_scale) along the local axes
24-27  4 u8    colour R, G, B = round(255 clamp(0.5 + C0 * sh_dc)), A = round(255 sigmoid(logit))
28-31  4 u8    rotation w, x, y, z of the unit quaternion, each round(128 q + 128) clamped to [0, 255]
====== ======= ==============================================================================

Gaussians are written by decreasing ``exp(sum log_scale) * sigmoid(logit)`` (volume times
opacity, the order the reference converter uses, so progressive loaders show the large opaque
ones first); the viewers sort by depth themselves. Only the view-independent colour (SH degree 0)
fits the format.

Quantisation on reading back (:func:`read_splat`): positions and scales are exact float32; colour
and opacity within 0.5 / 255 (after the clamp to [0, 1]); each quaternion component within
0.5 / 128, except +1 which is stored as 255 and reads back as 127 / 128 (error 1 / 128).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from stag4d.errors import DataError
from stag4d.files import atomic_path
from stag4d.rasterizer.sh import sh_dc_to_rgb

SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])
assert SPLAT_DTYPE.itemsize == 32
COLOR_STEP = 1.0 / 255.0  # one unit of the stored colour and opacity
ROTATION_STEP = 1.0 / 128.0  # one unit of a stored quaternion component


def splat_values(gaussians) -> dict[str, np.ndarray]:
    """What a .splat file holds for raw ``GaussianParams``, before quantisation, in the Gaussians'
    order (the keys of :func:`read_splat`; ``quat`` normalized)."""
    def numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    rgb = gaussians.colors if gaussians.sh is None else sh_dc_to_rgb(gaussians.sh[:, 0])
    return {"position": numpy(gaussians.means), "scale": numpy(torch.exp(gaussians.log_scales.detach().float())),
            "rgb": numpy(rgb.clamp(0.0, 1.0)), "opacity": numpy(torch.sigmoid(gaussians.opacity_logits.detach().float())),
            "quat": numpy(torch.nn.functional.normalize(gaussians.quats.detach().float(), dim=-1))}


def splat_records(gaussians) -> np.ndarray:
    """Structured array [N] of :data:`SPLAT_DTYPE` from raw ``GaussianParams`` (in file order)."""
    values = splat_values(gaussians)
    order = np.argsort(-values["scale"].astype(np.float64).prod(axis=1) * values["opacity"], kind="stable")
    records = np.empty(len(order), dtype=SPLAT_DTYPE)
    records["position"] = values["position"][order]
    records["scale"] = values["scale"][order]
    rgba = np.concatenate([values["rgb"][order], values["opacity"][order, None]], axis=1)
    records["rgba"] = np.round(np.clip(rgba, 0.0, 1.0) * 255.0).astype(np.uint8)
    records["rotation"] = np.clip(np.round(values["quat"][order] * 128.0 + 128.0), 0, 255).astype(np.uint8)
    return records


def write_splat(path: str, gaussians) -> int:
    """Write ``gaussians`` (raw ``GaussianParams``) as a .splat file atomically; returns its size in bytes."""
    records = splat_records(gaussians)
    with atomic_path(path) as tmp:
        records.tofile(tmp)
    return records.nbytes


def read_splat(path: str) -> dict[str, np.ndarray]:
    """A .splat file as arrays: position [N, 3], scale [N, 3], rgb [N, 3] and opacity [N] in [0, 1],
    quat [N, 4] (w, x, y, z as decoded, (byte - 128) / 128, not renormalized), all float32, in file order."""
    size = _file_size(path)
    if size % SPLAT_DTYPE.itemsize:
        raise DataError(f"{path}: {size} bytes is not a whole number of 32-byte splats; the file is truncated")
    records = np.fromfile(path, dtype=SPLAT_DTYPE)
    quat = (records["rotation"].astype(np.float32) - 128.0) / 128.0
    rgba = records["rgba"].astype(np.float32) / 255.0
    return {"position": records["position"].copy(), "scale": records["scale"].copy(), "rgb": rgba[:, :3],
            "opacity": rgba[:, 3], "quat": quat}


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError as err:
        raise DataError(f"{path}: cannot read the .splat file ({err.strerror}); export it again") from None


__all__ = ["COLOR_STEP", "ROTATION_STEP", "SPLAT_DTYPE", "read_splat", "splat_records", "splat_values", "write_splat"]
