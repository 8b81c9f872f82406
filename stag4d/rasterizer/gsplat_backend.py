"""CUDA backend: gsplat 1.5.3's projection, tile binning and rasterization kernels, imported lazily.

One call renders a whole batch when the views share the image size and clipping planes and the
Gaussian sets share their count and colour layout (batch dimension of gsplat); the same Gaussian
set seen by several cameras uses gsplat's camera dimension instead.

``means2d``: gsplat returns one [B, C, N, 2] tensor for the whole call. Each RenderOutput gets its
[N, 2] slice; a hook on the full tensor writes (and accumulates, like ``retain_grad``) the slice
of dL/d(means2d) into every slice's ``.grad`` during backward, so ``out.means2d.grad`` is the
screen-space gradient in pixels, as with the torch backend.
"""
from __future__ import annotations

import functools
import math
import weakref
from typing import Sequence

import torch

from cam_utils import Camera, camera_centres
from stag4d.rasterizer.sh import SH_C0
from stag4d.rasterizer.types import GaussianBatch, GaussianParams, RenderOutput

TILE_SIZE = 16  # pixels per tile side, gsplat's default


@functools.lru_cache(maxsize=None)
def gsplat_status() -> tuple[bool, str]:
    """(usable, reason): gsplat imports and its CUDA extension loads (compiling it the first time)."""
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    try:
        import gsplat  # noqa: F401
        from gsplat.cuda._backend import _C
    except Exception as exc:  # any failure to import or compile means: use the torch backend
        return False, f"gsplat unusable ({type(exc).__name__}: {exc})"
    if _C is None:
        return False, "gsplat's CUDA extension did not build"
    return True, f"gsplat {gsplat.__version__}"


def _same_layout(gaussians: Sequence[GaussianParams]) -> bool:
    first = gaussians[0]
    for g in gaussians[1:]:
        if g.num != first.num or (g.sh is None) != (first.sh is None):
            return False
        if g.sh is not None and g.sh.shape != first.sh.shape:
            return False
    return True


def same_view_setup(cameras: Sequence[Camera]) -> bool:
    """Whether gsplat can render these cameras in one call: the same image size and clip planes."""
    first = cameras[0]
    return all((c.width, c.height, c.near, c.far) == (first.width, first.height, first.near, first.far)
               for c in cameras[1:])


def _colour_input(gaussians: GaussianParams) -> tuple[torch.Tensor, int | None]:
    """(colors argument [N, K, 3] or [N, 3], sh_degree argument) for gsplat."""
    if gaussians.sh is not None:
        return gaussians.sh, gaussians.sh_degree
    return gaussians.colors, None


@functools.lru_cache(maxsize=64)
def _camera_matrix(fx: float, fy: float, width: int, height: int, device: torch.device) -> torch.Tensor:
    """K [3, 3] float32 on ``device`` (as ``Camera.intrinsics``: principal point W/2, H/2), cached.

    Cached because a per-call host-to-device copy makes the host wait for all queued GPU work,
    which costs more than gsplat's kernels; K only depends on these few numbers.
    """
    k = torch.tensor([[fx, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float32)
    return k.to(device)


def _scales(gaussians: GaussianParams, scale_modifier: float) -> torch.Tensor:
    scales = torch.exp(gaussians.log_scales)
    return scales if scale_modifier == 1.0 else scales * scale_modifier


def _intrinsics(cameras: Sequence[Camera], device: torch.device) -> torch.Tensor:
    """K [B, 3, 3] float32 on ``device``."""
    ks = [_camera_matrix(*c.focal, c.width, c.height, torch.device(device)) for c in cameras]
    return ks[0].unsqueeze(0) if len(ks) == 1 else torch.stack(ks)


def _split_means2d(means2d: torch.Tensor, num_images: int) -> list[torch.Tensor]:
    """Per-image views [N, 2] of gsplat's means2d [..., N, 2] whose .grad is filled in backward.

    The hook sits on gsplat's own tensor (the one its rasterizer used), not on a reshaped copy.
    It holds the views through weak references: a strong one would close a reference cycle
    through the autograd graph (hook -> view -> its grad_fn -> means2d's node -> hook) that
    Python's garbage collector cannot see, and every render would leak its means2d.
    """
    if not means2d.requires_grad:
        return list(means2d.detach().reshape(num_images, -1, 2).unbind(0))
    views = list(means2d.reshape(num_images, -1, 2).unbind(0))
    for view in views:
        view.retain_grad()  # marks the view as grad-holding (no warning on .grad access)
    view_refs = [weakref.ref(view) for view in views]

    def scatter_grad(grad: torch.Tensor) -> None:
        for ref, view_grad in zip(view_refs, grad.reshape(num_images, -1, 2).unbind(0)):
            view = ref()
            if view is not None:
                view.grad = view_grad.clone() if view.grad is None else view.grad + view_grad

    means2d.register_hook(scatter_grad)
    return views


def _view_colours(means, colors, sh_degree, viewmats, radii) -> torch.Tensor:
    """RGB [..., C, N, 3] of every Gaussian as seen by every camera (3DGS: 0.5 + SH, clamped at 0).

    Degree 0 is view-independent: one multiply-add, no direction and no SH kernel.
    """
    image_dims = viewmats.shape[:-2]
    n = means.shape[-2]
    if sh_degree is None:
        return colors.unsqueeze(-3).expand(*image_dims, n, 3)
    if sh_degree == 0:
        rgb = colors[..., 0, :] * SH_C0 + 0.5
        return torch.clamp_min(rgb, 0.0).unsqueeze(-3).expand(*image_dims, n, 3)
    from gsplat import spherical_harmonics

    dirs = means.unsqueeze(-3) - camera_centres(viewmats).unsqueeze(-2)  # [..., C, N, 3]
    coeffs = colors.unsqueeze(-4).expand(*image_dims, *colors.shape[-3:])
    rgb = spherical_harmonics(sh_degree, dirs, coeffs, masks=(radii > 0).all(dim=-1))
    return torch.clamp_min(rgb + 0.5, 0.0)


def _rasterize(means, quats, scales, opacities, colors, sh_degree, viewmats, Ks, backgrounds,
               camera: Camera) -> list[RenderOutput]:
    """Project, bin into tiles and composite with gsplat's CUDA functions; one RenderOutput per image.

    The steps of ``gsplat.rasterization`` (pinhole camera, unpacked, classic mode, RGB+D) called
    directly: that function spends more host time than its kernels take (argument checks, a
    host-synchronising matrix inverse for the camera centres, a per-call K), and this renderer is
    host-bound at the sizes we train at.

    Shapes: means [..., N, 3], quats [..., N, 4], scales [..., N, 3], opacities [..., N], colors
    [..., N, K, 3] (SH) or [..., N, 3] (RGB), viewmats [..., C, 4, 4], Ks [..., C, 3, 3],
    backgrounds [..., C, 3] with ``...`` empty or (B,).
    """
    from gsplat import (
        fully_fused_projection,
        isect_offset_encode,
        isect_tiles,
        rasterize_to_pixels,
    )

    width, height = camera.width, camera.height
    radii, means2d, depths, conics, _ = fully_fused_projection(
        means, None, quats, scales, viewmats, Ks, width, height, eps2d=0.3, near_plane=camera.near,
        far_plane=camera.far, opacities=opacities)  # radii [..., C, N, 2], means2d [..., C, N, 2]
    image_dims = means2d.shape[:-2]
    num_images = math.prod(image_dims)
    rgb = _view_colours(means, colors, sh_degree, viewmats, radii)
    features = torch.cat([rgb, depths.unsqueeze(-1)], dim=-1)  # [..., C, N, 4]: RGB + depth
    backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(*image_dims, 1)], dim=-1)
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    _, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, TILE_SIZE, tiles_x, tiles_y)
    isect_offsets = isect_offset_encode(isect_ids, num_images, tiles_x, tiles_y).reshape(*image_dims, tiles_y, tiles_x)
    opacities = opacities.unsqueeze(-2).expand(*image_dims, means.shape[-2])
    render_colors, render_alphas = rasterize_to_pixels(
        means2d, conics, features, opacities, width, height, TILE_SIZE, isect_offsets, flatten_ids,
        backgrounds=backgrounds)
    render_colors = render_colors.reshape(num_images, height, width, 4)
    render_alphas = render_alphas.reshape(num_images, height, width, 1)
    radii = radii.reshape(num_images, -1, 2).amax(dim=-1)  # int32
    means2d = _split_means2d(means2d, num_images)
    visible = radii > 0  # one launch for every image (the renderer is host-bound)
    return [
        RenderOutput(image=render_colors[i, ..., :3].permute(2, 0, 1), alpha=render_alphas[i].permute(2, 0, 1),
                     depth=render_colors[i, ..., 3:4].permute(2, 0, 1), radii=radii[i], means2d=means2d[i],
                     visible=visible[i])
        for i in range(num_images)
    ]


def render_gsplat_batch(gaussians: Sequence[GaussianParams], cameras: Sequence[Camera],
                        backgrounds: torch.Tensor, scale_modifier: float = 1.0) -> list[RenderOutput]:
    """Render B views; one gsplat call when the batch allows it, else one call per view.

    Args:
        gaussians: B Gaussian sets (the same object repeated means one set seen by B cameras).
        cameras: B cameras.
        backgrounds: [B, 3].
    """
    if isinstance(gaussians, GaussianBatch) and same_view_setup(cameras):
        return _render_sets(gaussians, cameras, backgrounds, scale_modifier)
    if not (same_view_setup(cameras) and _same_layout(gaussians)):
        return [out for g, c, bg in zip(gaussians, cameras, backgrounds)
                for out in render_gsplat_batch([g], [c], bg.unsqueeze(0), scale_modifier)]
    device = gaussians[0].means.device
    viewmats = [c.world_to_camera.to(device=device, dtype=torch.float32) for c in cameras]
    viewmats = viewmats[0].unsqueeze(0) if len(viewmats) == 1 else torch.stack(viewmats)
    Ks = _intrinsics(cameras, device)
    backgrounds = backgrounds.to(device=device, dtype=torch.float32)
    camera = cameras[0]
    if all(g is gaussians[0] for g in gaussians):
        g = gaussians[0]
        colors, sh_degree = _colour_input(g)
        out = _rasterize(g.means, g.quats, _scales(g, scale_modifier), torch.sigmoid(g.opacity_logits), colors,
                         sh_degree, viewmats, Ks, backgrounds, camera)
    else:
        colors, sh_degree = zip(*[_colour_input(g) for g in gaussians])
        out = _rasterize(
            torch.stack([g.means for g in gaussians]),
            torch.stack([g.quats for g in gaussians]),
            torch.stack([_scales(g, scale_modifier) for g in gaussians]),
            torch.stack([torch.sigmoid(g.opacity_logits) for g in gaussians]),
            torch.stack(colors), sh_degree[0], viewmats.unsqueeze(1), Ks.unsqueeze(1),
            backgrounds.unsqueeze(1), camera,
        )
    return out


def _render_sets(gaussians: GaussianBatch, cameras: Sequence[Camera], backgrounds: torch.Tensor,
                 scale_modifier: float) -> list[RenderOutput]:
    """One gsplat call for a GaussianBatch: B sets, each seen by ``repeats`` cameras (gsplat's
    batch and camera dimensions); camera i sees set i % B, outputs in the order of ``cameras``."""
    sets, per_set = gaussians.sets, gaussians.repeats
    device = gaussians.means.device
    order = [c * sets + b for b in range(sets) for c in range(per_set)]  # gsplat's [B, C] order
    viewmats = torch.stack([cameras[i].world_to_camera.to(device=device, dtype=torch.float32) for i in order])
    Ks = _intrinsics([cameras[i] for i in order], device)
    backgrounds = backgrounds.to(device=device, dtype=torch.float32).reshape(per_set, sets, 3).transpose(0, 1)
    opacities = torch.sigmoid(gaussians.opacity_logits)
    if opacities.dim() == 1:
        opacities = opacities.expand(sets, -1)
    colors, sh_degree = _colour_input(gaussians)  # shared by the sets: broadcast, not copied
    out = _rasterize(gaussians.means, gaussians.quats, _scales(gaussians, scale_modifier), opacities, colors,
                     sh_degree, viewmats.reshape(sets, per_set, 4, 4), Ks.reshape(sets, per_set, 3, 3), backgrounds,
                     cameras[0])
    return [out[b * per_set + c] for c in range(per_set) for b in range(sets)]


def render_gsplat(gaussians: GaussianParams, camera: Camera, background: torch.Tensor,
                  scale_modifier: float = 1.0) -> RenderOutput:
    """Render one view with gsplat."""
    return render_gsplat_batch([gaussians], [camera], background.reshape(1, 3), scale_modifier)[0]
