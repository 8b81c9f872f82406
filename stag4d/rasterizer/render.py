"""One entry point for both rasterizer backends: :func:`render` and :func:`render_batch`."""
from __future__ import annotations

import functools
import logging
from typing import Sequence

import torch

from cam_utils import Camera
from stag4d.errors import UserError
from stag4d.rasterizer.diff_gauss_backend import diff_gauss_status, render_diff_gauss, render_diff_gauss_batch
from stag4d.rasterizer.gsplat_backend import gsplat_status, render_gsplat, render_gsplat_batch, same_view_setup
from stag4d.rasterizer.torch_backend import render_torch
from stag4d.rasterizer.types import GaussianBatch, GaussianParams, RenderOutput

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "gsplat", "diff_gauss")


class BackendUnavailable(UserError, ValueError):
    """The requested rasterizer backend is unknown or cannot run here."""


@functools.lru_cache(maxsize=None)
def _announce(device_type: str, choice: str, reason: str) -> None:
    """Log the automatic backend choice once per (device type, choice)."""
    logger.info("rasterizer backend 'auto' on %s: %s (%s)", device_type, choice, reason)


def resolve_backend(name: str, device: torch.device | str) -> str:
    """Concrete backend ("torch", "gsplat" or "diff_gauss") for ``name`` of :data:`BACKENDS` on ``device``.

    ``auto`` picks gsplat on CUDA when it imports and its CUDA extension loads, torch otherwise
    (diff_gauss only when asked for). Asking for a CUDA backend where it cannot run raises
    :class:`BackendUnavailable` (a UserError).
    """
    device = torch.device(device)
    if name not in BACKENDS:
        raise BackendUnavailable(f"rasterizer backend {name!r} is unknown; use one of {', '.join(BACKENDS)}")
    if name == "torch":
        return "torch"
    if name == "diff_gauss":
        usable, reason = diff_gauss_status() if device.type == "cuda" else (False, f"it needs CUDA, got {device}")
        if not usable:
            raise BackendUnavailable(f"rasterizer backend 'diff_gauss' cannot run: {reason}; use 'gsplat' or 'torch'")
        return "diff_gauss"
    if device.type != "cuda":
        if name == "gsplat":
            raise BackendUnavailable(f"rasterizer backend 'gsplat' needs a CUDA device, got {device}; use 'torch' or 'auto'")
        _announce(device.type, "torch", "gsplat needs CUDA")
        return "torch"
    usable, reason = gsplat_status()
    if name == "gsplat":
        if not usable:
            raise BackendUnavailable(f"rasterizer backend 'gsplat' cannot run: {reason}; use 'torch' or 'auto'")
        return "gsplat"
    choice = "gsplat" if usable else "torch"
    _announce(device.type, choice, reason)
    return choice


def _check_inputs(gaussians: GaussianParams, camera: Camera, background: torch.Tensor) -> None:
    _check_gaussians(gaussians)
    _check_view(camera, background)


def _check_gaussians(gaussians: GaussianParams) -> None:
    n = gaussians.num
    shapes = {"means": (gaussians.means, (n, 3)), "log_scales": (gaussians.log_scales, (n, 3)),
              "quats": (gaussians.quats, (n, 4)), "opacity_logits": (gaussians.opacity_logits, (n,))}
    if gaussians.colors is not None:
        shapes["colors"] = (gaussians.colors, (n, 3))
    else:
        gaussians.sh_degree  # validates the coefficient count
        shapes["sh"] = (gaussians.sh, (n, gaussians.sh.shape[1], 3))
    for field, (tensor, shape) in shapes.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"GaussianParams.{field} has shape {tuple(tensor.shape)}, expected {shape}")


def _check_view(camera: Camera, background: torch.Tensor) -> None:
    if background.numel() != 3:
        raise ValueError(f"background must hold 3 values (RGB), got shape {tuple(background.shape)}")
    if camera.width <= 0 or camera.height <= 0:
        raise ValueError(f"camera size must be positive, got {camera.width}x{camera.height}")


def _pick(backend: str, gaussians: GaussianParams) -> str:
    choice = resolve_backend(backend, gaussians.means.device)
    if choice in ("gsplat", "diff_gauss") and gaussians.means.dtype != torch.float32:
        if backend == choice:
            raise BackendUnavailable(f"rasterizer backend {choice!r} needs float32 Gaussians, got {gaussians.means.dtype}")
        return "torch"  # auto: the CUDA kernels are float32 only
    return choice


def render(gaussians: GaussianParams, camera: Camera, background: torch.Tensor, backend: str = "auto",
           scale_modifier: float = 1.0) -> RenderOutput:
    """Render ``gaussians`` seen by ``camera`` over ``background`` [3].

    Returns image [3, H, W], alpha [1, H, W], depth [1, H, W] (alpha-weighted camera depth),
    radii [N] int32, means2d [N, 2] pixels (its ``.grad`` after backward is the screen-space
    gradient) and visible [N] bool.
    """
    _check_inputs(gaussians, camera, background)
    choice = _pick(backend, gaussians)
    if choice == "gsplat":
        return render_gsplat(gaussians, camera, background, scale_modifier)
    if choice == "diff_gauss":
        return render_diff_gauss(gaussians, camera, background, scale_modifier)
    return render_torch(gaussians, camera, background, scale_modifier)


def render_batch(gaussians: Sequence[GaussianParams], cameras: Sequence[Camera], backgrounds: torch.Tensor,
                 backend: str = "auto", scale_modifier: float = 1.0) -> list[RenderOutput]:
    """Render B views: ``gaussians[b]`` seen by ``cameras[b]`` over ``backgrounds[b]`` ([B, 3]).

    gsplat renders the batch in one call when all cameras share width, height, near and far and
    all Gaussian sets share their count and colour layout; the torch backend loops. A
    :class:`GaussianBatch` (the deformation's sets, possibly ``repeated``) reaches gsplat as it
    is, without a per-set stack.
    """
    if not (len(gaussians) == len(cameras) == backgrounds.shape[0]) or len(cameras) == 0:
        raise ValueError(f"render_batch needs B >= 1 Gaussian sets, cameras and backgrounds [B, 3]; got "
                         f"{len(gaussians)}, {len(cameras)} and {tuple(backgrounds.shape)}")
    if isinstance(gaussians, GaussianBatch):
        first = gaussians[0]  # the sets share their shapes (GaussianBatch checks them): one check
        _check_gaussians(first)
        for c, bg in zip(cameras, backgrounds):
            _check_view(c, bg)
        choices = {_pick(backend, first)}
        if choices != {"gsplat"}:  # only gsplat takes the batch as it is; the others take the sets
            gaussians = list(gaussians)
    else:
        for g, c, bg in zip(gaussians, cameras, backgrounds):
            _check_inputs(g, c, bg)
        choices = {_pick(backend, g) for g in gaussians}
    if choices == {"gsplat"}:
        return render_gsplat_batch(gaussians, cameras, backgrounds, scale_modifier)
    if choices == {"diff_gauss"}:
        return render_diff_gauss_batch(gaussians, cameras, backgrounds, scale_modifier)
    return [render_torch(g, c, bg, scale_modifier) for g, c, bg in zip(gaussians, cameras, backgrounds)]
