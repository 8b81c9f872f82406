"""Timestep window of the SDS loss (SPEC section 5).

The window ``[min_step, max_step]`` is given as fractions of the diffusion model's training
timesteps (1000 for Zero123). Both ends move linearly in the global step from their start value
(step 0) to their end value (step ``anneal_steps``) and are held there afterwards:
``min 0.5 -> 0.02`` and ``max 0.95 -> 0.5``.

The ends are settings of :class:`guidance.GuidanceConfig` (``min_step_start``, ``min_step_end``,
``max_step_start``, ``max_step_end``, ``anneal_steps``).
"""
from __future__ import annotations

from . import GuidanceConfig


def window_fractions(step: int, cfg: GuidanceConfig) -> tuple[float, float]:
    """(min, max) of the timestep window at global ``step``, as fractions of the training timesteps."""
    anneal = cfg.anneal_steps
    ratio = 1.0 if anneal <= 0 else min(max(step / anneal, 0.0), 1.0)
    t_min = cfg.min_step_start + (cfg.min_step_end - cfg.min_step_start) * ratio
    t_max = cfg.max_step_start + (cfg.max_step_end - cfg.max_step_start) * ratio
    if not 0.0 <= t_min <= t_max <= 1.0:
        raise ValueError(
            f"timestep window [{t_min:.3f}, {t_max:.3f}] at step {step} is not inside [0, 1]: "
            "check min_step_start/min_step_end/max_step_start/max_step_end in the config"
        )
    return t_min, t_max


def timestep_window(step: int, cfg: GuidanceConfig, num_train_timesteps: int = 1000) -> tuple[int, int]:
    """(min_step, max_step): integer timesteps; SDS draws t uniformly in this closed range.

    ``timestep_rounding="round"`` (ours) rounds to the nearest integer, so that e.g. 0.725 * 1000
    gives 725 despite floating-point error; ``"truncate"`` is the released ``int()`` (724 there).
    ``max_step`` stays below ``num_train_timesteps``.
    """
    t_min, t_max = window_fractions(step, cfg)
    last = num_train_timesteps - 1
    to_int = (lambda x: int(round(x))) if cfg.timestep_rounding == "round" else int
    min_step = min(to_int(t_min * num_train_timesteps), last)
    max_step = min(to_int(t_max * num_train_timesteps), last)
    return min_step, max_step
