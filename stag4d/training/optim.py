"""The optimizer of the 4D Gaussians (SPEC 7): Adam over the released parameter groups, with
their learning-rate schedules.

Groups: xyz, deformation (the MLP), grid (the HexPlanes), f_dc, f_rest, opacity, scaling,
rotation. Positions, MLP and grids decay exponentially (times ``spatial_lr_scale``) over
``position_lr_max_steps``; the others are constant (f_rest at ``feature_lr / 20``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gs_renderer import GaussianModel4D
from stag4d.settings import setting
from stag4d.training.schedules import ConstantLR, ExponentialLR, LRScheduler


@dataclass
class OptimConfig:
    """Learning rates and Adam settings (defaults = the released run)."""

    spatial_lr_scale: float = setting(10.0, "multiplies the position, deformation and grid rates", gt=0)
    position_lr_init: float = setting(2e-4, "position rate at step 0 (times spatial_lr_scale)", ge=0)
    position_lr_final: float = setting(2e-6, "position rate from position_lr_max_steps on", ge=0)
    position_lr_delay_mult: float = setting(0.01, "delay multiplier (acts only with lr_delay_steps > 0)", ge=0)
    position_lr_max_steps: int = setting(2000, "steps of the exponential decays", ge=1)
    deformation_lr_init: float = setting(1.6e-4, "deformation MLP rate at step 0 (times spatial_lr_scale)", ge=0)
    deformation_lr_final: float = setting(1.6e-5, "deformation MLP final rate", ge=0)
    deformation_lr_delay_mult: float = setting(0.02, "delay multiplier of the MLP and the grids", ge=0)
    grid_lr_init: float = setting(1.6e-3, "HexPlane rate at step 0 (times spatial_lr_scale)", ge=0)
    grid_lr_final: float = setting(1.6e-4, "HexPlane final rate", ge=0)
    feature_lr: float = setting(5e-3, "SH DC rate (the other SH coefficients: / 20)", ge=0)
    opacity_lr: float = setting(0.02, "opacity rate", ge=0)
    scaling_lr: float = setting(0.01, "log-scale rate", ge=0)
    rotation_lr: float = setting(0.002, "quaternion rate", ge=0)
    lr_delay_steps: int = setting(0, "ours; 0 = the released run (its delay multipliers then have no effect)", ge=0)
    adam_eps: float = setting(1e-15, "Adam epsilon (released: 1e-15)", gt=0)
    fused_adam: bool = setting(True, "one fused CUDA kernel for the Adam update (CUDA only; the same update)")


def build_optimizer(model: GaussianModel4D, cfg: OptimConfig) -> tuple[torch.optim.Adam, LRScheduler]:
    """Adam over all parameters in the released groups, and the scheduler that sets their lr.

    With ``fused_adam`` and the model on CUDA, torch's fused Adam kernel (the same update; the
    default multi-tensor Adam launches several kernels per group). The rates are set for step 0.
    """
    spatial = cfg.spatial_lr_scale
    steps, delay = cfg.position_lr_max_steps, cfg.lr_delay_steps
    schedules = {
        "xyz": ExponentialLR(cfg.position_lr_init * spatial, cfg.position_lr_final * spatial, steps, delay,
                             cfg.position_lr_delay_mult),
        "deformation": ExponentialLR(cfg.deformation_lr_init * spatial, cfg.deformation_lr_final * spatial, steps,
                                     delay, cfg.deformation_lr_delay_mult),
        "grid": ExponentialLR(cfg.grid_lr_init * spatial, cfg.grid_lr_final * spatial, steps, delay,
                              cfg.deformation_lr_delay_mult),
        "f_dc": ConstantLR(cfg.feature_lr),
        "f_rest": ConstantLR(cfg.feature_lr / 20.0),
        "opacity": ConstantLR(cfg.opacity_lr),
        "scaling": ConstantLR(cfg.scaling_lr),
        "rotation": ConstantLR(cfg.rotation_lr),
    }
    groups = [
        {"params": [model.means], "name": "xyz"},
        {"params": model.deformation.mlp_parameters(), "name": "deformation"},
        {"params": model.deformation.grid_parameters(), "name": "grid"},
        {"params": [model.sh_dc], "name": "f_dc"},
        {"params": [model.sh_rest], "name": "f_rest"},
        {"params": [model.opacity_logits], "name": "opacity"},
        {"params": [model.log_scales], "name": "scaling"},
        {"params": [model.quats], "name": "rotation"},
    ]
    for group in groups:
        group["lr"] = schedules[group["name"]](0)
    fused = cfg.fused_adam and model.means.device.type == "cuda"
    optimizer = torch.optim.Adam(groups, lr=0.0, eps=cfg.adam_eps, fused=fused or None)
    scheduler = LRScheduler(optimizer, schedules)
    scheduler.step(0)
    return optimizer, scheduler


__all__ = ["OptimConfig", "build_optimizer"]
