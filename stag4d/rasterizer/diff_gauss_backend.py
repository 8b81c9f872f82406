"""CUDA backend ``diff_gauss``: the rasterizer the released STAG4D trains with.

It is the fork of 3D Gaussian Splatting's diff-gaussian-rasterization at
github.com/slothfulxtx/diff-gaussian-rasterization (package ``diff_gauss``), optional: used when it
imports. Install (CUDA toolkit and a CUDA build of torch; on CUDA 13 its sources need two more
standard headers)::

    git clone --recursive https://github.com/slothfulxtx/diff-gaussian-rasterization
    NVCC_APPEND_FLAGS="-include cstdint -include cfloat" pip install --no-build-isolation ./diff-gaussian-rasterization

Its rules are the original 3DGS ones, which differ from gsplat 1.5.3's in two places: alpha is
clamped at 0.99 (gsplat: 0.999), and Gaussians nearer than 0.2 in camera space are culled. It
takes the 3DGS matrices (world-to-camera and its product with an OpenGL-style projection,
transposed), activated scales and opacities, normalized quaternions (w, x, y, z); its colour is
``SH . basis + 0.5`` clamped at 0, composited over the background; its depth is the
alpha-weighted depth, as ours. Its screen-space gradient is in NDC units: the ``means2d`` given
to it is our pixel-unit leaf times (2 / W, 2 / H), so ``means2d.grad`` is in pixels as with the
other backends. One call renders one view; a batch loops.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from cam_utils import Camera, project_points
from stag4d.rasterizer.types import GaussianParams, RenderOutput


@functools.lru_cache(maxsize=None)
def diff_gauss_status() -> tuple[bool, str]:
    """(usable, reason): CUDA is there and ``diff_gauss`` with its compiled extension imports."""
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    try:
        import diff_gauss  # noqa: F401  (the optional compiled package)
    except Exception as exc:  # not installed, or built for another torch
        return False, (f"diff_gauss is not installed ({type(exc).__name__}: {exc}); see the install line in "
                       "stag4d/rasterizer/diff_gauss_backend.py")
    return True, "diff_gauss"


def projection_matrix(camera: Camera) -> torch.Tensor:
    """3DGS's ``getProjectionMatrix`` [4, 4] (OpenGL-style clip space, camera looking down +z)."""
    tan_y = math.tan(math.radians(camera.fovy) / 2.0)
    tan_x = math.tan(math.radians(camera.fovx) / 2.0)
    near, far = camera.near, camera.far
    matrix = torch.zeros(4, 4, dtype=torch.float32)
    matrix[0, 0] = 1.0 / tan_x
    matrix[1, 1] = 1.0 / tan_y
    matrix[3, 2] = 1.0
    matrix[2, 2] = far / (far - near)
    matrix[2, 3] = -(far * near) / (far - near)
    return matrix.to(camera.device)


def render_diff_gauss(gaussians: GaussianParams, camera: Camera, background: torch.Tensor,
                      scale_modifier: float = 1.0) -> RenderOutput:
    """One view through ``diff_gauss`` (see the module docstring); the RenderOutput of the others."""
    from diff_gauss import GaussianRasterizationSettings, GaussianRasterizer

    device = gaussians.means.device
    camera = camera.to(device)
    view = camera.world_to_camera.float()
    settings = GaussianRasterizationSettings(
        image_height=int(camera.height), image_width=int(camera.width),
        tanfovx=math.tan(math.radians(camera.fovx) / 2.0), tanfovy=math.tan(math.radians(camera.fovy) / 2.0),
        bg=background.to(device, torch.float32).reshape(3), scale_modifier=float(scale_modifier),
        viewmatrix=view.T.contiguous(), projmatrix=(projection_matrix(camera) @ view).T.contiguous(),
        sh_degree=gaussians.sh_degree or 0, campos=camera.camera_center.float(), prefiltered=False, debug=False,
    )
    with torch.no_grad():
        pixels, _ = project_points(camera, gaussians.means.detach())
    means2d = pixels.clone().requires_grad_(True)  # pixel units: its .grad is the screen-space gradient
    ndc_scale = torch.tensor([2.0 / camera.width, 2.0 / camera.height], device=device)
    means2d_ndc = torch.cat([means2d * ndc_scale, torch.zeros_like(means2d[:, :1])], dim=1)  # [N, 3] as 3DGS
    colours = {"shs": gaussians.sh} if gaussians.sh is not None else {"colors_precomp": gaussians.colors}
    image, depth, _, alpha, radii, _ = GaussianRasterizer(settings)(
        means3D=gaussians.means, means2D=means2d_ndc, opacities=torch.sigmoid(gaussians.opacity_logits)[:, None],
        scales=torch.exp(gaussians.log_scales), rotations=torch.nn.functional.normalize(gaussians.quats, dim=-1),
        **colours,
    )
    return RenderOutput(image=image, alpha=alpha.reshape(1, camera.height, camera.width),
                        depth=depth.reshape(1, camera.height, camera.width), radii=radii.int(), means2d=means2d,
                        visible=radii > 0)


def render_diff_gauss_batch(gaussians: Sequence[GaussianParams], cameras: Sequence[Camera],
                            backgrounds: torch.Tensor, scale_modifier: float = 1.0) -> list[RenderOutput]:
    return [render_diff_gauss(g, c, bg, scale_modifier) for g, c, bg in zip(gaussians, cameras, backgrounds)]


__all__ = ["diff_gauss_status", "projection_matrix", "render_diff_gauss", "render_diff_gauss_batch"]
