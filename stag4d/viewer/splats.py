"""Gaussians as the browser draws them: centres, 3D covariances, colours and opacities (numpy).

viser's splat renderer takes activated values: the world covariance ``R S S^T R^T`` (from our
rasterizer's own :func:`~stag4d.rasterizer.torch_backend.covariance_3d`, so both agree on what a
Gaussian is), opacity ``sigmoid(logit)`` and one RGB colour per Gaussian. The colour is the
view-independent SH term (``0.5 + C0 * dc``, the colour of degree-0 models exactly); higher SH
degrees are only in our full-quality renders.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stag4d.rasterizer import GaussianParams
from stag4d.rasterizer.sh import SH_C0
from stag4d.rasterizer.torch_backend import activate, covariance_3d


@dataclass
class Splats:
    """N Gaussians for the browser (float32 numpy arrays)."""

    centers: np.ndarray  # [N, 3]
    covariances: np.ndarray  # [N, 3, 3]
    rgbs: np.ndarray  # [N, 3] in [0, 1]
    opacities: np.ndarray  # [N, 1] in [0, 1]

    @property
    def num(self) -> int:
        return int(self.centers.shape[0])


@torch.no_grad()
def splats_of(gaussians: GaussianParams) -> Splats:
    """The activated arrays of ``gaussians`` (scale modifier already applied to their log-scales)."""
    scales, quats, opacities = activate(gaussians, 1.0)
    if gaussians.sh is not None:
        rgbs = SH_C0 * gaussians.sh[:, 0] + 0.5
    else:
        rgbs = gaussians.colors
    num = gaussians.num
    # one device-to-host copy for all four arrays
    packed = torch.cat([gaussians.means.reshape(num, 3), covariance_3d(quats, scales).reshape(num, 9),
                        rgbs.clamp(0.0, 1.0).reshape(num, 3), opacities.reshape(num, 1)], dim=1)
    host = packed.detach().float().cpu().numpy()
    return Splats(np.ascontiguousarray(host[:, 0:3]), np.ascontiguousarray(host[:, 3:12]).reshape(num, 3, 3),
                  np.ascontiguousarray(host[:, 12:15]), np.ascontiguousarray(host[:, 15:16]))


__all__ = ["Splats", "splats_of"]
