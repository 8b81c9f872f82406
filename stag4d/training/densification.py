"""Adaptive density control of the canonical Gaussians (SPEC 6), factored as gsplat's strategies.

As gsplat's strategies, :class:`DensifyStrategy` is a dataclass whose fields are its settings
(the ``densify`` section of the run config); the running statistics live in a separate state
dict that the trainer owns and checkpoints. Usage per training step (after ``loss.backward()``)::

    state = strategy.initialize_state()                   # once
    strategy.accumulate(state, render_outputs, step)       # all renders of the step
    optimizer.step(); optimizer.zero_grad()
    stats = strategy.step(model, optimizer, state, step)  # clone / split / prune on schedule

Statistic (as the released trainer): for one step, the screen-space position gradients of all its
renders are converted to NDC units (pixel gradient times (W/2, H/2), so renders of different sizes
add up) and SUMMED as vectors; the norm of that sum is added to ``grad_sum`` and ``count`` grows
by 1 for each Gaussian visible in at least one render of the step. The per-Gaussian statistic is
the mean ``grad_sum / count`` (0 where count is 0). ``max_radii`` keeps each Gaussian's largest
screen radius (pixels) since the last densification.

Densification, at steps ``density_start_iter <= step <= density_end_iter`` with
``step % densification_interval == 1`` (statistics are accumulated over the same window):

* threshold: the statistic ranked at index ``int(p / 100 * M)`` in descending order among the M
  Gaussians with a positive statistic (p = ``densify_grad_threshold_percent``); Gaussians with a
  statistic >= threshold are selected (the released code ranks log-gradients: same order);
* clone the selected with max scale <= ``percent_dense * extent``: an exact copy;
* split the selected with a larger max scale into 2: positions drawn from the Gaussian
  (R diag(s) z, z ~ N(0, I)), scales / (0.8 * 2) = / 1.6, other values copied; the parent goes;
* prune (after growing): opacity < ``min_opacity``; max scale > ``max_scale_prune * extent``;
  max scale < ``min_scale_prune``; and, only with ``screen_size_prune`` (ours, off by default),
  max screen radius > ``max_screen_size`` px since the last densification.
  Why off: the released code resets its radius statistic inside the growing step, before
  pruning, so its screen-size test never fires; run honestly at 2 px it would remove nearly every
  Gaussian of a 512 px render (the initial ones are about 25 px wide).
* the statistics are reset to zero for all Gaussians.

Optimizer state: grown Gaussians get zero Adam moments (exp_avg, exp_avg_sq), pruned ones are
removed, survivors keep theirs; the per-Gaussian param groups get new parameter objects and the
state is re-keyed; the deformation and grid groups are untouched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from gs_renderer import PER_GAUSSIAN_GROUPS, GaussianModel4D
from stag4d.settings import setting

PER_GAUSSIAN_ATTRS = tuple(PER_GAUSSIAN_GROUPS.values())
SPLIT_COUNT = 2  # children of a split Gaussian (3DGS's N)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [N, 3, 3] of quaternions [N, 4] (w, x, y, z; normalized here)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


def relative_grad_threshold(grads: Tensor, percent: float) -> Tensor | None:
    """The statistic at descending rank ``int(percent / 100 * M)`` among the M positive ones [scalar].

    None when no Gaussian has a positive statistic.
    """
    positive = grads[grads > 0]
    if positive.numel() == 0:
        return None
    ranked = positive.sort(descending=True).values
    index = min(int(percent / 100.0 * positive.numel()), positive.numel() - 1)
    return ranked[index]


@torch.no_grad()
def update_gaussians(model: GaussianModel4D, optimizer: torch.optim.Optimizer | None, keep: Tensor,
                     appended: dict[str, Tensor] | None = None) -> None:
    """Keep the Gaussians ``keep`` (LongTensor [M] of indices) and append new ones.

    Every per-Gaussian parameter becomes ``cat(old[keep], appended[attr])`` (a new nn.Parameter);
    the optimizer's group holding the old parameter gets the new one, with its state re-keyed:
    moments of kept Gaussians copied, of appended ones zero. ``appended`` maps the model attribute
    names (means, sh_dc, ...) to [K, ...] values; None appends nothing.
    """
    groups = {}
    if optimizer is not None:
        for group in optimizer.param_groups:
            if group.get("name") in PER_GAUSSIAN_GROUPS:
                groups[PER_GAUSSIAN_GROUPS[group["name"]]] = group
    for attr in PER_GAUSSIAN_ATTRS:
        old = getattr(model, attr)
        extra = appended[attr].to(old) if appended else old.new_zeros((0,) + old.shape[1:])
        new = nn.Parameter(torch.cat([old.detach()[keep], extra], dim=0).contiguous())
        group = groups.get(attr)
        if group is not None:
            if len(group["params"]) != 1 or group["params"][0] is not old:
                raise RuntimeError(f"optimizer group '{group['name']}' does not hold model.{attr}; "
                                   "build the optimizer after the model's Gaussians are set")
            state = optimizer.state.pop(old, None)
            if state:
                for key, value in state.items():
                    if torch.is_tensor(value) and value.shape == old.shape:
                        state[key] = torch.cat([value[keep], value.new_zeros(extra.shape)], dim=0)
                optimizer.state[new] = state
            group["params"][0] = new
        setattr(model, attr, new)


@dataclass
class DensifyStrategy:
    """Clone / split / prune of the canonical Gaussians (see the module docstring).

    The fields are the settings (defaults = the released run); the statistics are a state dict
    (:meth:`initialize_state`): ``grad_sum``, ``count``, ``max_radii``, each [N] or None.
    """

    density_start_iter: int = setting(1200, "first step of densification (statistics are gathered from here)", ge=0)
    density_end_iter: int = setting(6000, "last step of densification", ge=0)
    densification_interval: int = setting(100, "densify at steps with step % interval == 1", ge=1)
    densify_grad_threshold_percent: float = setting(2.5, "densify the top p percent of the positive gradient "
                                                    "statistics", ge=0, le=100)
    percent_dense: float = setting(0.1, "clone at max scale <= percent_dense * extent, split above", gt=0)
    extent: float = setting(1.0, "scene extent of the scale thresholds", gt=0)
    min_opacity: float = setting(0.01, "prune below this opacity", ge=0, le=1)
    max_scale_prune: float = setting(0.1, "prune max scale > this * extent", gt=0)
    min_scale_prune: float = setting(0.001, "prune max scale < this", ge=0)
    max_screen_size: float = setting(2.0, "screen radius in pixels of the screen-size prune", gt=0)
    screen_size_prune: bool = setting(False, "prune by screen size (the released test never fires; see "
                                      "stag4d/training/densification.py)")

    # ---- schedule ------------------------------------------------------------------------------
    def in_window(self, step: int) -> bool:
        return self.density_start_iter <= step <= self.density_end_iter

    def is_refine_step(self, step: int) -> bool:
        interval = self.densification_interval
        return self.in_window(step) and step % interval == 1 % interval

    # ---- statistics ----------------------------------------------------------------------------
    @staticmethod
    def initialize_state() -> dict[str, Optional[Tensor]]:
        """Empty statistics; sized at the first :meth:`accumulate` (and after every refinement)."""
        return {"grad_sum": None, "count": None, "max_radii": None}

    @staticmethod
    def _reset(state: dict[str, Optional[Tensor]], num: int, device: torch.device | str) -> None:
        state["grad_sum"] = torch.zeros(num, device=device)
        state["count"] = torch.zeros(num, device=device)
        state["max_radii"] = torch.zeros(num, device=device)

    def _ensure(self, state: dict[str, Optional[Tensor]], num: int, device: torch.device) -> None:
        grad_sum = state.get("grad_sum")
        if grad_sum is None or grad_sum.shape[0] != num or grad_sum.device != device:
            self._reset(state, num, device)

    @torch.no_grad()
    def accumulate(self, state: dict[str, Optional[Tensor]], outputs: Sequence[Any], step: int | None = None) -> None:
        """Add one step's renders (RenderOutputs after backward) to the statistics.

        Uses ``out.means2d.grad`` [N, 2] (pixels; a render without gradient adds 0),
        ``out.radii`` [N], ``out.visible`` [N] and the image size. With ``step`` given, steps
        outside [density_start_iter, density_end_iter] are ignored (as the released trainer).
        """
        if not outputs or (step is not None and not self.in_window(step)):
            return
        num = outputs[0].means2d.shape[-2]
        device = outputs[0].means2d.device
        grad = torch.zeros(num, 2, device=device)
        visible = torch.zeros(num, dtype=torch.bool, device=device)
        radii = torch.zeros(num, device=device)
        for out in outputs:
            height, width = out.image.shape[-2:]
            if out.means2d.grad is not None:
                pixel_grad = out.means2d.grad.reshape(num, 2).float()
                if width == height:  # the same arithmetic in two launches instead of four
                    grad += pixel_grad * (width / 2.0)  # d(pixel)/d(ndc) = size / 2
                else:
                    grad[:, 0] += pixel_grad[:, 0] * (width / 2.0)
                    grad[:, 1] += pixel_grad[:, 1] * (height / 2.0)
            visible |= out.visible.reshape(num).bool()
            radii = torch.maximum(radii, out.radii.reshape(num).float())
        self._ensure(state, num, device)
        # torch.where instead of boolean indexing: no host synchronization on the GPU
        state["grad_sum"] += torch.where(visible, grad.norm(dim=-1), torch.zeros_like(state["grad_sum"]))
        state["count"] += visible.float()
        state["max_radii"] = torch.where(visible, torch.maximum(state["max_radii"], radii), state["max_radii"])

    @staticmethod
    def mean_grad(state: dict[str, Optional[Tensor]]) -> Tensor:
        """Per-Gaussian statistic [N]: grad_sum / count, 0 where never visible."""
        grad_sum, count = state["grad_sum"], state["count"]
        return torch.where(count > 0, grad_sum / count.clamp_min(1), torch.zeros_like(grad_sum))

    # ---- refinement ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, model: GaussianModel4D, optimizer: torch.optim.Optimizer | None,
             state: dict[str, Optional[Tensor]], step: int) -> dict[str, Any]:
        """Clone, split and prune at refinement steps; returns counts and the threshold used."""
        result: dict[str, Any] = {"cloned": 0, "split": 0, "pruned": 0, "threshold": None, "refined": False}
        if not self.is_refine_step(step):
            return result
        result["refined"] = True
        self._ensure(state, model.num, model.means.device)
        grads = self.mean_grad(state)
        radii = state["max_radii"]
        threshold = relative_grad_threshold(grads, self.densify_grad_threshold_percent)
        if threshold is not None:
            result["threshold"] = float(threshold)
            max_scale = model.activated_scales.max(dim=1).values
            selected = grads >= threshold
            clone = selected & (max_scale <= self.percent_dense * self.extent)
            split = selected & (max_scale > self.percent_dense * self.extent)
            appended = self._grown(model, clone, split)
            update_gaussians(model, optimizer, (~split).nonzero().squeeze(1), appended)
            radii = torch.cat([radii[~split], radii[clone], radii[split].repeat(SPLIT_COUNT)])
            result["cloned"], result["split"] = int(clone.sum()), int(split.sum())

        max_scale = model.activated_scales.max(dim=1).values
        prune = (model.opacities < self.min_opacity) | (max_scale > self.max_scale_prune * self.extent)
        prune |= max_scale < self.min_scale_prune
        if self.screen_size_prune:
            prune |= radii > self.max_screen_size
        if prune.any():
            update_gaussians(model, optimizer, (~prune).nonzero().squeeze(1))
        result["pruned"] = int(prune.sum())
        self._reset(state, model.num, model.means.device)
        return result

    @staticmethod
    def _grown(model: GaussianModel4D, clone: Tensor, split: Tensor) -> dict[str, Tensor]:
        """New Gaussians: exact copies of ``clone`` [N] then ``SPLIT_COUNT`` samples of each ``split`` [N]."""
        k = SPLIT_COUNT
        scales = model.activated_scales[split].repeat(k, 1)  # [k*S, 3], copy-major
        rotations = quat_to_rotmat(model.quats[split]).repeat(k, 1, 1)
        offsets = (rotations @ (torch.randn_like(scales) * scales).unsqueeze(-1)).squeeze(-1)
        children = {
            "means": model.means[split].repeat(k, 1) + offsets,
            "log_scales": torch.log(scales / (0.8 * k)),
        }
        grown = {}
        for attr in PER_GAUSSIAN_ATTRS:
            value = getattr(model, attr).detach()
            split_value = children.get(attr)
            if split_value is None:
                split_value = value[split].repeat(k, *([1] * (value.dim() - 1)))
            grown[attr] = torch.cat([value[clone], split_value], dim=0)
        return grown
