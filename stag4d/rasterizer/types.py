"""Inputs and outputs of the rasterizer."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch


@dataclass
class _GaussianAttributes:
    """The attributes shared by one set of Gaussians and a batch of sets (shapes: see each)."""

    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor | None = None
    colors: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.sh is None) == (self.colors is None):
            raise ValueError(f"{type(self).__name__} needs exactly one of sh [N, K, 3] or colors [N, 3]")

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
class GaussianParams(_GaussianAttributes):
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

    @property
    def num(self) -> int:
        return self.means.shape[0]


@dataclass
class GaussianBatch(_GaussianAttributes):
    """B sets of the same N Gaussians (as the deformation field makes them for B times), as a
    sequence of ``repeats * B`` :class:`GaussianParams`: item i is set ``i % B``.

    It keeps the batched tensors, so the gsplat backend renders the sets without stacking them
    again: one activation per attribute instead of one per set, no per-set select and stack in
    backward, and a set that several cameras see (``repeated``) is projected for each camera
    from the same tensor (gsplat's camera dimension) rather than copied.

    Attributes:
        means, log_scales: [B, N, 3]; quats: [B, N, 4].
        opacity_logits: [N] (shared by the B sets) or [B, N].
        sh: [N, K, 3] (shared) or None; colors: [N, 3] (shared) or None (exactly one of them).
        repeats: how many times the sequence goes through the B sets.
    """

    repeats: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.means.dim() != 3:
            raise ValueError(f"GaussianBatch needs means [B, N, 3]; got {tuple(self.means.shape)}")
        sets, n = self.means.shape[:2]
        for name, tensor, last in (("log_scales", self.log_scales, 3), ("quats", self.quats, 4)):
            if tuple(tensor.shape) != (sets, n, last):
                raise ValueError(f"GaussianBatch.{name} has shape {tuple(tensor.shape)}, expected {(sets, n, last)}")
        if tuple(self.opacity_logits.shape) not in ((n,), (sets, n)):
            raise ValueError(f"GaussianBatch.opacity_logits has shape {tuple(self.opacity_logits.shape)}, "
                             f"expected {(n,)} or {(sets, n)}")
        if self.repeats < 1:
            raise ValueError(f"GaussianBatch.repeats must be >= 1, got {self.repeats}")

    @property
    def sets(self) -> int:
        """B, the number of distinct sets."""
        return self.means.shape[0]

    @property
    def num(self) -> int:
        return self.means.shape[1]

    def __len__(self) -> int:
        return self.repeats * self.sets

    def __getitem__(self, index: int | slice) -> GaussianParams | GaussianBatch | list[GaussianParams]:
        if isinstance(index, slice):
            if self.repeats != 1:
                return [self[i] for i in range(len(self))[index]]
            opacity = self.opacity_logits[index] if self.opacity_logits.dim() == 2 else self.opacity_logits
            return GaussianBatch(self.means[index], self.log_scales[index], self.quats[index], opacity,
                                 sh=self.sh, colors=self.colors)
        if not -len(self) <= index < len(self):
            raise IndexError(f"set {index} of a GaussianBatch of {len(self)}")
        b = index % self.sets
        opacity = self.opacity_logits[b] if self.opacity_logits.dim() == 2 else self.opacity_logits
        return GaussianParams(means=self.means[b], log_scales=self.log_scales[b], quats=self.quats[b],
                              opacity_logits=opacity, sh=self.sh, colors=self.colors)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def repeated(self, times: int) -> GaussianBatch:
        """The sequence gone through ``times`` times (no copy)."""
        return replace(self, repeats=self.repeats * times)


def concat_sets(first: Sequence[GaussianParams], second: Sequence[GaussianParams]) -> Sequence[GaussianParams]:
    """``first`` then ``second`` as one sequence of sets; a GaussianBatch followed by itself stays
    a batch (``repeated(2)``), so the renderer does not copy it."""
    if first is second and isinstance(first, GaussianBatch):
        return first.repeated(2)
    return list(first) + list(second)


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
