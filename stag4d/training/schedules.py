"""Learning-rate schedules (SPEC 7): exponential decay with an optional delayed start.

:func:`expon_lr` has the semantics of 3D Gaussian Splatting's ``get_expon_lr_func``:

* log-linear interpolation from ``lr_init`` at step 0 to ``lr_final`` at ``max_steps``, held at
  ``lr_final`` afterwards: ``lr(s) = exp((1 - u) log(lr_init) + u log(lr_final))``,
  ``u = clip(s / max_steps, 0, 1)``;
* a delay ramp when ``delay_steps > 0``: the rate is multiplied by
  ``delay_mult + (1 - delay_mult) * sin(pi / 2 * clip(s / delay_steps, 0, 1))``, which eases from
  ``delay_mult`` at step 0 to 1 at ``delay_steps``;
* ``lr_init == lr_final`` gives that constant; a negative step or both rates 0 gives 0.

The released STAG4D run passes a delay multiplier (0.01 for positions, 0.02 for the deformation
MLP and the grids) but no delay steps, so its delay ramp is OFF (delay_steps = 0). That is our
default too (config key ``lr_delay_steps``, ours); the multipliers only act when it is > 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch


def expon_lr(step: float, lr_init: float, lr_final: float, max_steps: int, delay_steps: int = 0,
             delay_mult: float = 1.0) -> float:
    """Learning rate at ``step`` (see the module docstring)."""
    if lr_init == lr_final:
        return float(lr_init)
    if step < 0 or (lr_init == 0.0 and lr_final == 0.0):
        return 0.0
    if delay_steps > 0:
        ramp = min(max(step / delay_steps, 0.0), 1.0)
        delay_rate = delay_mult + (1.0 - delay_mult) * math.sin(0.5 * math.pi * ramp)
    else:
        delay_rate = 1.0
    u = min(max(step / max_steps, 0.0), 1.0) if max_steps > 0 else 1.0
    return delay_rate * math.exp(math.log(lr_init) * (1.0 - u) + math.log(lr_final) * u)


@dataclass(frozen=True)
class ExponentialLR:
    """A callable schedule ``step -> lr`` with fixed settings (see :func:`expon_lr`)."""

    lr_init: float
    lr_final: float
    max_steps: int
    delay_steps: int = 0
    delay_mult: float = 1.0

    def __call__(self, step: float) -> float:
        return expon_lr(step, self.lr_init, self.lr_final, self.max_steps, self.delay_steps, self.delay_mult)


@dataclass(frozen=True)
class ConstantLR:
    lr: float

    def __call__(self, step: float) -> float:
        return self.lr


class LRScheduler:
    """Sets the learning rate of named param groups (``group["name"]``) for a global step.

    Groups without a schedule keep their learning rate. Unlike ``torch.optim.lr_scheduler`` the
    step is absolute: ``step(global_step)`` may be called with any step (resume, jumps).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedules: Mapping[str, Callable[[float], float]]):
        names = {group.get("name") for group in optimizer.param_groups}
        unknown = set(schedules) - names
        if unknown:
            raise KeyError(f"schedules for param groups that the optimizer lacks: {sorted(unknown)}")
        self.optimizer = optimizer
        self.schedules = dict(schedules)
        self.last_step: int | None = None

    def step(self, global_step: int) -> dict[str, float]:
        """Set the scheduled groups' lr for ``global_step``; returns {group name: lr}."""
        lrs = {}
        for group in self.optimizer.param_groups:
            schedule = self.schedules.get(group.get("name"))
            if schedule is not None:
                group["lr"] = schedule(global_step)
                lrs[group["name"]] = group["lr"]
        self.last_step = int(global_step)
        return lrs

    def current_lrs(self) -> dict[str, float]:
        """{group name: lr} of every named group."""
        return {group["name"]: group["lr"] for group in self.optimizer.param_groups if "name" in group}

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: Mapping) -> None:
        last = state.get("last_step")
        if last is not None:
            self.step(last)
