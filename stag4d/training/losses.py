"""Losses of one training step (SPEC 4): reference photometric terms and regularizers.

* :func:`per_sample_mse`: the photometric terms, summed over the samples of a step as the
  released loop adds one loss per sample; the trainer weights them (reference: ``step_ratio *
  20000`` for RGB and ``step_ratio * 5000`` for alpha).
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

from dataclasses import dataclass

import torch
from torch import Tensor

from stag4d.gaussians.deformation import DeformationField, HexPlaneField
from stag4d.settings import setting


@dataclass
class LossConfig:
    """Weights of the loss terms of one step (SPEC 4; defaults = the released run)."""

    lambda_ref_rgb: float = setting(20000.0, "reference-view RGB MSE (ramped by step_ratio)", ge=0)
    lambda_ref_alpha: float = setting(5000.0, "reference-view alpha MSE (ramped by step_ratio)", ge=0)
    lambda_zero123: float = setting(1.0, "Zero123 SDS of the random views (0: no diffusion model is loaded)", ge=0)
    lambda_tv: float = setting(1.0, "HexPlane regularizers (fine stage only unless regularize_coarse)", ge=0)
    regularize_coarse: bool = setting(False, "the HexPlane regularizers in the coarse stage too (released: every "
                                      "step; ours: no deformation there, so no data term for them)")
    time_smoothness_weight: float = setting(5.0, "smoothness along t of the space-time planes", ge=0)
    plane_tv_weight: float = setting(0.05, "smoothness of the spatial planes", ge=0)
    l1_time_planes: float = setting(0.05, "|1 - plane| of the space-time planes", ge=0)
    lambda_anisotropy: float = setting(1.0, "anisotropy loss (SPEC 4.5 gives no weight: 1)", ge=0)
    lambda_motion_smooth: float = setting(0.0, "ours: squared acceleration of the deformed centres in time, at a "
                                          "random time, per frame interval squared (0 = released)", ge=0)
    scale_loss_ratio: float = setting(7.5, "allowed ratio of the largest to the smallest scale", gt=0)
    anisotropy_activated: bool = setting(True, "on activated scales (SPEC); false = the released log-scales (always 0)")
    lambda_anchor_rgb: float = setting(0.0, "ours: RGB MSE at the anchor views (0 = faithful)", ge=0)
    lambda_anchor_alpha: float = setting(0.0, "ours: alpha MSE at the anchor views", ge=0)
    anchors_per_sample: int = setting(1, "anchors rendered per sample for the anchor losses (0 = all)", ge=0)
    reference_only_sds: bool = setting(False, "with lambda_zero123 > 0 and no zero123/ anchors, condition the SDS "
                                       "on the reference alone (else missing anchors are an error)")

    @property
    def uses_anchor_images(self) -> bool:
        """The anchor losses are on (they need the anchor images)."""
        return self.lambda_anchor_rgb > 0 or self.lambda_anchor_alpha > 0

    @property
    def uses_reference(self) -> bool:
        return self.lambda_ref_rgb > 0 or self.lambda_ref_alpha > 0


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


def total_regularizer(reg: dict[str, Tensor], cfg: LossConfig) -> Tensor:
    """``lambda_tv * (time_smoothness_weight * time_smooth + plane_tv_weight * plane_tv
    + l1_time_planes * l1_time)``, defaults 1 * (5, 0.05, 0.05)."""
    weighted = (cfg.time_smoothness_weight * reg["time_smooth"] + cfg.plane_tv_weight * reg["plane_tv"]
                + cfg.l1_time_planes * reg["l1_time"])
    return cfg.lambda_tv * weighted


def hexplane_regularizer(field: DeformationField | HexPlaneField, cfg: LossConfig) -> Tensor:
    """:func:`total_regularizer` of :func:`hexplane_regularizers`: the training step's one call
    (``compile_regularizers`` compiles this function)."""
    return total_regularizer(hexplane_regularizers(field), cfg)


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


def per_sample_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Sum over the batch of per-sample mean squared errors: [B, C, H, W] x2 -> scalar."""
    return (prediction - target).square().flatten(1).mean(dim=1).sum()
