"""Losses of one training step (SPEC 4): reference photometric terms and regularizers.

* :func:`reference_losses`: ``step_ratio * 20000 * MSE(image, ref_rgb)`` and
  ``step_ratio * 5000 * MSE(alpha, ref_mask)``.
* :func:`hexplane_regularizers`: three HexPlane terms, each summed over planes and scales;
  :func:`total_regularizer` weights them (5, 0.05, 0.05) times ``lambda_tv``.
* :func:`anisotropy_loss`: penalizes Gaussians whose largest / smallest scale exceeds ``ratio``.

Released quirks (documented, not copied): the released trainer passes the RAW (log) scales of the
last render to the anisotropy loss; log-scales of Gaussians smaller than 1 are negative, so
max / min <= 1 < 7.5 and the term is always 0 there. SPEC 4.5 says activated scales, our default
(``activated=True``); ``activated=False`` reproduces the released computation. The released call of
the regularizer swaps the plane-TV and L1 weights; both are 0.05, so nothing changes.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from deformation import DeformationField, HexPlaneField, _get


def second_difference_smoothness(planes: Tensor) -> Tensor:
    """Per plane, mean squared second difference along the row axis (dim -2).

    Args:
        planes: [P, C, H, W] stacked planes (H >= 3).
    Returns:
        [P] one value per plane: mean over (C, H - 2, W) of (p[h+2] - 2 p[h+1] + p[h])^2.
    """
    second = planes[..., 2:, :] - 2.0 * planes[..., 1:-1, :] + planes[..., :-2, :]
    return second.square().flatten(1).mean(dim=1)


def hexplane_regularizers(field: DeformationField | HexPlaneField) -> dict[str, Tensor]:
    """The three HexPlane regularizers, each summed over the 3 planes of a kind and all scales.

    * ``time_smooth``: smoothness along t of the planes xt, yt, zt (stored [C, T, R]: rows are t);
    * ``plane_tv``: the same second-difference smoothness along the row axis (res_b) of the planes
      xy, xz, yz (the released "plane TV");
    * ``l1_time``: mean |1 - plane| of the planes xt, yt, zt (1 = no motion).
    """
    grid = field.grid if isinstance(field, DeformationField) else field
    time_smooth = plane_tv = l1_time = 0.0
    for spatial, temporal in zip(grid.spatial_planes, grid.time_planes):
        time_smooth = time_smooth + second_difference_smoothness(temporal).sum()
        plane_tv = plane_tv + second_difference_smoothness(spatial).sum()
        l1_time = l1_time + (1.0 - temporal).abs().flatten(1).mean(dim=1).sum()
    return {"time_smooth": time_smooth, "plane_tv": plane_tv, "l1_time": l1_time}


def total_regularizer(reg: dict[str, Tensor], cfg: Any = None) -> Tensor:
    """``lambda_tv * (time_smoothness_weight * time_smooth + plane_tv_weight * plane_tv
    + l1_time_planes * l1_time)``, defaults 1 * (5, 0.05, 0.05)."""
    weighted = (float(_get(cfg, "time_smoothness_weight", 5.0)) * reg["time_smooth"]
                + float(_get(cfg, "plane_tv_weight", 0.05)) * reg["plane_tv"]
                + float(_get(cfg, "l1_time_planes", 0.05)) * reg["l1_time"])
    return float(_get(cfg, "lambda_tv", 1.0)) * weighted


def anisotropy_loss(log_scales: Tensor, ratio: float = 7.5, activated: bool = True) -> Tensor:
    """``(mean(max(max(s) / (min(s) + 1e-8), ratio)) - ratio) * N`` over Gaussians.

    Args:
        log_scales: [N, 3] log-scales (of the last render: deformed in the fine stage).
        ratio: allowed ratio of the largest to the smallest scale (``scale_loss_ratio``).
        activated: s = exp(log_scales) (SPEC); False uses the raw log-scales (released code).
    Returns:
        scalar, 0 when every Gaussian is within the ratio.
    """
    s = torch.exp(log_scales) if activated else log_scales
    n = s.shape[0]
    if n == 0:
        return log_scales.sum() * 0.0
    quotient = s.max(dim=1).values / (s.min(dim=1).values + 1e-8)
    return (torch.clamp_min(quotient, ratio).mean() - ratio) * n


def reference_losses(out: Any, ref_rgb: Tensor, ref_mask: Tensor, step_ratio: float, cfg: Any = None) -> dict[str, Tensor]:
    """Photometric losses of the reference render (SPEC 4.1).

    Args:
        out: a RenderOutput (image [3, H, W], alpha [1, H, W]).
        ref_rgb: [3, H, W] (or [1, 3, H, W]) reference colour on white.
        ref_mask: [1, H, W] (or [1, 1, H, W] / [H, W]) reference alpha.
        step_ratio: min(1, step / iters).
        cfg: keys ``lambda_ref_rgb`` [20000], ``lambda_ref_alpha`` [5000].
    Returns:
        {"rgb": step_ratio * lambda_rgb * MSE, "alpha": step_ratio * lambda_alpha * MSE}.
    """
    image, alpha = out.image, out.alpha
    rgb_loss = F.mse_loss(image, ref_rgb.reshape(image.shape))
    alpha_loss = F.mse_loss(alpha, ref_mask.reshape(alpha.shape))
    return {
        "rgb": step_ratio * float(_get(cfg, "lambda_ref_rgb", 20000.0)) * rgb_loss,
        "alpha": step_ratio * float(_get(cfg, "lambda_ref_alpha", 5000.0)) * alpha_loss,
    }
