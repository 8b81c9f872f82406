"""Differentiable Gaussian rasterization behind one interface.

``render(gaussians, camera, background) -> RenderOutput`` with backends:

* ``torch``: pure-PyTorch reference (CPU and CUDA, autograd), see :mod:`stag4d.rasterizer.torch_backend`;
* ``gsplat``: CUDA through gsplat's kernels, see :mod:`stag4d.rasterizer.gsplat_backend`;
* ``auto``: gsplat on CUDA when it imports, torch otherwise (the choice is logged once).

Screen-space gradient for densification: both backends return ``means2d`` [N, 2] in PIXELS,
whose ``.grad`` after backward is dL/d(pixel position). :func:`ndc_grad_norm` converts it to the
unit the densification statistic uses (NDC, as 3D Gaussian Splatting: pixel gradient times
(W/2, H/2)), so renders at different resolutions add up comparably.

Importing this package imports torch only (no diffusers, dearpygui or rembg).
"""
from stag4d.rasterizer.render import (BACKENDS, BackendUnavailable, render, render_batch, resolve_backend,
                                     same_view_setup)
from stag4d.rasterizer.types import GaussianBatch, GaussianParams, RenderOutput, concat_sets, ndc_grad_norm

__all__ = ["BACKENDS", "BackendUnavailable", "GaussianBatch", "GaussianParams", "RenderOutput", "concat_sets",
           "ndc_grad_norm", "render", "render_batch", "resolve_backend", "same_view_setup"]
