"""Differentiable Gaussian rasterization behind one interface.

``render(gaussians, camera, background) -> RenderOutput`` with backends:

* ``torch``: pure-PyTorch reference (CPU and CUDA, autograd), see :mod:`rasterizer.torch_backend`;
* ``gsplat``: CUDA through ``gsplat.rasterization``, see :mod:`rasterizer.gsplat_backend`;
* ``auto``: gsplat on CUDA when it imports, torch otherwise (the choice is logged once).

Screen-space gradient for densification: both backends return ``means2d`` [N, 2] in PIXELS,
whose ``.grad`` after backward is dL/d(pixel position). :func:`ndc_grad_norm` converts it to the
unit the densification statistic uses (NDC, as 3D Gaussian Splatting: pixel gradient times
(W/2, H/2)), so renders at different resolutions add up comparably.

Importing this package imports torch only (no diffusers, dearpygui or rembg).
"""
from rasterizer.types import GaussianParams, RenderOutput, ndc_grad_norm
from rasterizer.render import render, render_batch, resolve_backend

__all__ = ["GaussianParams", "RenderOutput", "render", "render_batch", "resolve_backend", "ndc_grad_norm"]
