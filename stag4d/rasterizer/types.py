"""Inputs and outputs of the rasterizer."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GaussianParams:
    """Raw (unactivated) parameters of N Gaussians in world space.

    Attributes:
        means: [N, 3] positions.
        log_scales: [N, 3] log of the standard deviations along the local axes.
        quats: [N, 4] rotations as quaternions (w, x, y, z), not necessarily normalized.
        opacity_logits: [N] opacity before the sigmoid.
        sh: [N, K, 3] spherical-harmonics coefficients, K = (degree + 1) ** 2 with degree 0..3,
            in the 3DGS convention (colour = 0.5 + SH . basis, clamped at 0);
            or None when ``colors`` is given.
        colors: [N, 3] RGB in [0, 1] (used instead of ``sh``), or None.
    """

    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor | None = None
    colors: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.sh is None) == (self.colors is None):
            raise ValueError("GaussianParams needs exactly one of sh [N, K, 3] or colors [N, 3]")

    @property
    def num(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int | None:
        if self.sh is None:
            return None
        k = self.sh.shape[1]
        degree = round(k ** 0.5) - 1
        if (degree + 1) ** 2 != k or not 0 <= degree <= 3:
            raise ValueError(f"sh has {k} coefficients per channel; expected 1, 4, 9 or 16")
        return degree


@dataclass
class RenderOutput:
    """What one render returns.

    Attributes:
        image: [3, H, W] colour composited over the background.
        alpha: [1, H, W] accumulated opacity.
        depth: [1, H, W] alpha-weighted camera-space depth (expected depth times alpha).
        radii: [N] int screen radius in pixels (0 for Gaussians not drawn).
        means2d: [N, 2] projected centres in pixels; its ``.grad`` after backward is the
            screen-space position gradient (pixel units; see :func:`ndc_grad_norm`).
        visible: [N] bool, Gaussians that touch the image.
    """

    image: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    radii: torch.Tensor
    means2d: torch.Tensor
    visible: torch.Tensor


def ndc_grad_norm(means2d_grad: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Norm [N] of the screen-space gradient in NDC units from a pixel-unit gradient [N, 2].

    d(pixel)/d(ndc) = (W/2, H/2), so dL/d(ndc) = dL/d(pixel) * (W/2, H/2).
    """
    scale = torch.tensor([width / 2.0, height / 2.0], device=means2d_grad.device, dtype=means2d_grad.dtype)
    return (means2d_grad * scale).norm(dim=-1)
