"""Pure-PyTorch differentiable Gaussian rasterizer: the reference backend (CPU and CUDA).

It follows gsplat 1.5.3's rules (``rasterization(..., packed=False, render_mode="RGB+D")``) so that
images and gradients of the two backends agree:

* EWA projection: 2D covariance ``J W Sigma W^T J^T`` with the perspective Jacobian ``J`` taken at
  the Gaussian centre clamped to 1.3x the field of view, plus a 0.3 px low-pass (``eps2d``) on the
  diagonal; Gaussians with depth outside [near, far] or a non-positive determinant are culled.
* Screen bounds: gsplat's opacity-aware box, per axis ``ceil(extend * sqrt(Sigma2d_ii))`` with
  ``extend = min(3.33, sqrt(2 log(255 opacity)))`` (this box, not a 3-sigma eigenvalue circle, is
  what gsplat 1.5.3 computes); ``radii`` reports the larger of the two axes.
* Compositing: pixel centres at ``(u + 0.5, v + 0.5)``, front to back by camera depth (ties by
  index), ``alpha = min(0.999, opacity * exp(-0.5 d^T Sigma2d^-1 d))``, pairs with alpha < 1/255
  skipped, a pixel stops before the Gaussian that would bring its transmittance to 1e-4 or below,
  background added as ``T_final * bg``, depth = sum of ``w_i * z_i`` (not normalized).

Which pixels are evaluated: alpha >= 1/255 holds exactly inside the ellipse
``0.5 d^T Sigma2d^-1 d <= log(255 opacity)``, which the box encloses; gsplat tests every pixel of
the 16x16 tiles the box touches, we enumerate per image row only the span of columns inside that
ellipse (slightly widened) and apply the same alpha test, so the same pairs contribute.

Vectorization: the (Gaussian, pixel) pairs of a band of image rows are generated at once, sorted by
(pixel, depth) with one integer sort, and composited with a segmented cumulative sum of
``log(1 - alpha)`` (in float64, so that subtracting the running sum at each pixel's start is
exact). A first pass without autograd finds the pairs that contribute (alpha >= 1/255, before
termination); only those enter the autograd graph. Per-Gaussian attributes are kept channel-first
([C, V]) so that gathers and their backward scatters run on contiguous rows. Bands hold at most
``pair_budget`` pairs; when an image needs several bands, each band is checkpointed (recomputed in
backward), so memory stays bounded at any resolution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from cam_utils import Camera
from stag4d.rasterizer.sh import sh_to_color
from stag4d.rasterizer.types import GaussianParams, RenderOutput

EPS2D = 0.3  # low-pass filter added to the 2D covariance diagonal, pixels^2
ALPHA_MIN = 1.0 / 255.0  # pairs below this alpha are skipped
ALPHA_MAX = 0.999  # alpha clamp (gsplat 1.5.3)
TRANSMITTANCE_MIN = 1e-4  # a pixel stops before its transmittance would reach this
MAX_EXTEND = 3.33  # cap of the box half-size in standard deviations (gsplat 1.5.3)
FOV_CLAMP = 0.3  # the Jacobian is evaluated within (1 + FOV_CLAMP) x the half field of view
# (Gaussian, pixel) pairs per band of rows (about 150 bytes of autograd state each)
PAIR_BUDGET = {"cpu": 1 << 21, "cuda": 1 << 24}
FEATURES = 4  # composited per pair: RGB + depth


@dataclass
class Pinhole:
    """Camera quantities in the Gaussians' dtype: rotation [3, 3], translation [3], intrinsics."""

    rotation: torch.Tensor
    translation: torch.Tensor
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    near: float
    far: float

    @staticmethod
    def from_camera(camera: Camera, dtype: torch.dtype, device: torch.device) -> "Pinhole":
        w2c = camera.world_to_camera.to(device=device, dtype=dtype)
        fx, fy = camera.focal
        return Pinhole(w2c[:3, :3], w2c[:3, 3], fx, fy, camera.width / 2.0, camera.height / 2.0,
                       camera.width, camera.height, camera.near, camera.far)


@dataclass
class Projected:
    """Screen-space Gaussians (autograd graph) of the V drawn Gaussians, front to back.

    ids [V] (indices into the N inputs), means2d [V, 2] pixels, depths [V], conics [V, 3]
    (a, b, c of the inverse blurred 2D covariance [[a, b], [b, c]]), opacities [V],
    radii [V, 2] int64 pixels.
    """

    ids: torch.Tensor
    means2d: torch.Tensor
    depths: torch.Tensor
    conics: torch.Tensor
    opacities: torch.Tensor
    radii: torch.Tensor


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N, 3, 3] from quaternions [N, 4] (w, x, y, z), normalized here."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(-1, 3, 3)


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World covariances [N, 3, 3] = R S S^T R^T from quaternions [N, 4] and scales [N, 3]."""
    m = quat_to_rotmat(quats) * scales.unsqueeze(-2)  # R @ diag(s)
    return m @ m.transpose(-1, -2)


def project(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, cam: Pinhole,
            eps2d: float = EPS2D) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EWA projection of N Gaussians.

    Returns means2d [N, 2] in pixels, depths [N] (camera z) and the blurred 2D covariance
    [N, 3] as (xx + eps2d, xy, yy + eps2d). Values are not finite where depth <= 0.
    """
    mean_cam = means @ cam.rotation.T + cam.translation
    x, y, z = mean_cam.unbind(-1)
    # gsplat clamps the point at which the Jacobian is taken to 1.3x the field of view, so that
    # Gaussians far outside the image do not get huge footprints.
    lim_x_pos = (cam.width - cam.cx) / cam.fx + FOV_CLAMP * 0.5 * cam.width / cam.fx
    lim_x_neg = cam.cx / cam.fx + FOV_CLAMP * 0.5 * cam.width / cam.fx
    lim_y_pos = (cam.height - cam.cy) / cam.fy + FOV_CLAMP * 0.5 * cam.height / cam.fy
    lim_y_neg = cam.cy / cam.fy + FOV_CLAMP * 0.5 * cam.height / cam.fy
    tx = z * torch.clamp(x / z, -lim_x_neg, lim_x_pos)
    ty = z * torch.clamp(y / z, -lim_y_neg, lim_y_pos)
    zeros = torch.zeros_like(z)
    jacobian = torch.stack([
        cam.fx / z, zeros, -cam.fx * tx / (z * z),
        zeros, cam.fy / z, -cam.fy * ty / (z * z),
    ], dim=-1).reshape(-1, 2, 3)
    cov_cam = cam.rotation @ covariance_3d(quats, scales) @ cam.rotation.T
    cov2d = jacobian @ cov_cam @ jacobian.transpose(-1, -2)
    blurred = torch.stack([cov2d[:, 0, 0] + eps2d, cov2d[:, 0, 1], cov2d[:, 1, 1] + eps2d], dim=-1)
    means2d = torch.stack([cam.fx * x / z + cam.cx, cam.fy * y / z + cam.cy], dim=-1)
    return means2d, z, blurred


def conic_of(blurred: torch.Tensor) -> torch.Tensor:
    """Inverse [N, 3] (a, b, c) of the symmetric 2x2 matrices given as (xx, xy, yy) [N, 3]."""
    xx, xy, yy = blurred.unbind(-1)
    det = xx * yy - xy * xy
    return torch.stack([yy / det, -xy / det, xx / det], dim=-1)


@torch.no_grad()
def screen_radii(means2d: torch.Tensor, depths: torch.Tensor, blurred: torch.Tensor,
                 opacities: torch.Tensor, cam: Pinhole) -> torch.Tensor:
    """Per-axis pixel radii [N, 2] int64 of gsplat's opacity-aware box; 0 for culled Gaussians.

    Culled: depth outside [near, far], non-positive 2D determinant, opacity < 1/255, or a box that
    does not overlap the image.
    """
    xx, xy, yy = blurred.unbind(-1)
    det = xx * yy - xy * xy
    keep = (depths >= cam.near) & (depths <= cam.far) & (det > 0) & (opacities >= ALPHA_MIN)
    extend = torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp_max(MAX_EXTEND)
    rx = torch.ceil(extend * torch.sqrt(xx.clamp_min(0)))
    ry = torch.ceil(extend * torch.sqrt(yy.clamp_min(0)))
    u, v = means2d.unbind(-1)
    keep &= (rx > 0) | (ry > 0)
    keep &= (u + rx > 0) & (u - rx < cam.width) & (v + ry > 0) & (v - ry < cam.height)
    keep &= torch.isfinite(u) & torch.isfinite(v) & torch.isfinite(rx) & torch.isfinite(ry)
    radii = torch.stack([rx, ry], dim=-1).nan_to_num(0.0).to(torch.int64)
    return radii * keep.unsqueeze(-1)


def activate(gaussians: GaussianParams, scale_modifier: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scales [N, 3], normalized-later quats [N, 4], opacities [N]) from raw parameters."""
    scales = torch.exp(gaussians.log_scales) * scale_modifier
    return scales, gaussians.quats, torch.sigmoid(gaussians.opacity_logits)


def project_gaussians(gaussians: GaussianParams, cam: Pinhole, scale_modifier: float = 1.0,
                      eps2d: float = EPS2D) -> Projected:
    """Cull with a gradient-free pass over all N, then project the drawn ones with autograd."""
    scales, quats, opacities = activate(gaussians, scale_modifier)
    with torch.no_grad():
        means2d, depths, blurred = project(gaussians.means, quats, scales, cam, eps2d)
        radii = screen_radii(means2d, depths, blurred, opacities, cam)
        drawn = torch.nonzero(radii.amax(dim=-1) > 0).squeeze(-1)
        # front to back: by depth, ties by index (gsplat's stable radix sort on depth)
        ids = drawn[torch.argsort(depths[drawn], stable=True)]
    means2d, depths, blurred = project(gaussians.means[ids], quats[ids], scales[ids], cam, eps2d)
    return Projected(ids, means2d, depths, conic_of(blurred), opacities[ids], radii[ids])


def colors_of(gaussians: GaussianParams, ids: torch.Tensor, camera_center: torch.Tensor) -> torch.Tensor:
    """RGB [V, 3] of the Gaussians ``ids``: SH seen from ``camera_center``, or the plain colours."""
    if gaussians.sh is None:
        return gaussians.colors[ids]
    return sh_to_color(gaussians.sh[ids], gaussians.means[ids], camera_center)


def pixel_boxes(means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Inclusive pixel ranges [V, 4] (u0, u1, v0, v1) int64 whose centres lie in each box, clipped."""
    centre = means2d.detach()
    lo = torch.ceil(centre - radii - 0.5).to(torch.int64)
    hi = torch.floor(centre + radii - 0.5).to(torch.int64)
    return torch.stack([lo[:, 0].clamp_min(0), hi[:, 0].clamp_max(width - 1),
                        lo[:, 1].clamp_min(0), hi[:, 1].clamp_max(height - 1)], dim=-1)


@torch.no_grad()
def row_spans(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor, boxes: torch.Tensor,
              margin: float = 1e-3) -> torch.Tensor:
    """Per (Gaussian, image row), the pixels whose centres can get alpha >= 1/255.

    alpha >= 1/255 <=> sigma(d) <= log(255 opacity): in each row of its box an ellipse leaves one
    span of columns, found by solving the quadratic in dx (in float64, widened by ``margin`` px so
    that no pixel the float32 alpha test would keep is lost; the test itself decides).

    Args:
        means2d [V, 2], conics [V, 3], opacities [V] (detached), boxes [V, 4] from pixel_boxes.
    Returns:
        [S, 4] int64 rows (gaussian, v, u_lo, u_hi), grouped by Gaussian (front to back), rows
        ascending; only non-empty spans.
    """
    device = boxes.device
    rows_per_box = (boxes[:, 3] - boxes[:, 2] + 1).clamp_min(0)
    gaussian = torch.repeat_interleave(torch.arange(boxes.shape[0], device=device), rows_per_box)
    first = torch.cumsum(rows_per_box, 0) - rows_per_box
    v = boxes[gaussian, 2] + torch.arange(gaussian.shape[0], device=device) - first[gaussian]
    mean = means2d.detach().to(torch.float64)[gaussian]
    a, b, c = conics.detach().to(torch.float64)[gaussian].unbind(-1)
    level = torch.log(opacities.detach().to(torch.float64)[gaussian] / ALPHA_MIN)
    dy = mean[:, 1] - (v.to(torch.float64) + 0.5)  # delta = mean - pixel centre, as gsplat
    # 0.5 a dx^2 + b dy dx + (0.5 c dy^2 - level) <= 0
    disc = (b * b - a * c) * dy * dy + 2.0 * a * level
    root = torch.sqrt(disc.clamp_min(0.0))
    dx_lo, dx_hi = (-b * dy - root) / a, (-b * dy + root) / a
    u_lo = torch.ceil(mean[:, 0] - dx_hi - 0.5 - margin).clamp(-1, 1 << 30).to(torch.int64)
    u_hi = torch.floor(mean[:, 0] - dx_lo - 0.5 + margin).clamp(-1, 1 << 30).to(torch.int64)
    u_lo = torch.maximum(u_lo, boxes[gaussian, 0])
    u_hi = torch.minimum(u_hi, boxes[gaussian, 1])
    nonempty = (disc >= -1e-9 * (a * level).abs()) & (u_lo <= u_hi)
    return torch.stack([gaussian, v, u_lo, u_hi], dim=-1)[nonempty]


def plan_bands(spans: torch.Tensor, height: int, pair_budget: int) -> list[tuple[int, int]]:
    """Split the rows into bands [(r0, r1)) of at most ``pair_budget`` pairs (one row at least)."""
    pairs_per_row = torch.zeros(height, dtype=torch.int64, device=spans.device)
    pairs_per_row.index_add_(0, spans[:, 1], spans[:, 3] - spans[:, 2] + 1)
    bands, start, total = [], 0, 0
    for row, count in enumerate(pairs_per_row.tolist()):
        if total + count > pair_budget and row > start:
            bands.append((start, row))
            start, total = row, 0
        total += count
    bands.append((start, height))
    return bands


def _band_pairs(spans: torch.Tensor, num: int, row0: int, row1: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All (Gaussian, pixel) pairs of a band's spans, sorted by pixel then by Gaussian (= depth order).

    Args:
        spans: [S, 4] (gaussian, v, u_lo, u_hi) with row0 <= v < row1.
        num: number of Gaussians (gaussian indices are < num).
    Returns:
        gaussian [M] int64, pixel [M] int64 index into the band (row-major).
    """
    device = spans.device
    lengths = spans[:, 3] - spans[:, 2] + 1
    span = torch.repeat_interleave(torch.arange(spans.shape[0], device=device), lengths)
    first_pair = torch.cumsum(lengths, 0) - lengths
    first_pixel = (spans[:, 1] - row0) * width + spans[:, 2]
    pixel = first_pixel[span] + torch.arange(span.shape[0], device=device) - first_pair[span]
    gaussian = spans[span, 0]
    # one unique integer key per pair: an unstable sort is deterministic and keeps depth order
    band_pixels = (row1 - row0) * width
    key_dtype = torch.int32 if band_pixels * max(num, 1) < 2**31 else torch.int64
    key = torch.sort((pixel * num + gaussian).to(key_dtype)).values.to(torch.int64)
    return key % num, key // num


def _segment_starts(pixel: torch.Tensor, num_pixels: int) -> torch.Tensor:
    """Index [M] of the first pair of each pair's pixel, for pairs sorted by ``pixel`` [M]."""
    counts = torch.bincount(pixel, minlength=num_pixels)
    return (torch.cumsum(counts, 0) - counts)[pixel]


def _segment_exclusive_cumsum(values: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Per-pixel exclusive cumulative sum [M] (float64) of ``values`` [M] (pairs sorted by pixel).

    A global float64 cumulative sum minus its value at each pixel's first pair: float64 keeps the
    subtraction exact enough (sums of ~1e7 with 1e-16 relative error).
    """
    values = values.to(torch.float64)
    exclusive = torch.cumsum(values, 0) - values
    return exclusive - exclusive[starts]


def _pair_alpha(rows: Sequence[torch.Tensor], centre_u: torch.Tensor, centre_v: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha [M] clamped at 0.999, sigma [M]) of each pair.

    Args:
        rows: per-pair copies [M] of the Gaussian's u, v, a / 2, b, c / 2, opacity, where
            [[a, b], [b, c]] is the inverse blurred 2D covariance.
        centre_u, centre_v: [M] pixel centres.
    """
    mean_u, mean_v, half_a, b, half_c, opacity = rows[:6]
    dx = mean_u - centre_u
    dy = mean_v - centre_v
    sigma = dx * (half_a * dx + b * dy) + half_c * dy * dy  # 0.5 d^T Sigma^-1 d
    alpha = torch.clamp_max(opacity * torch.exp(-sigma), ALPHA_MAX)
    return alpha, sigma


def _pixel_centres(pixel: torch.Tensor, row0: int, width: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (u + 0.5 [M], v + 0.5 [M]) of band pixel indices [M]."""
    return (pixel % width).to(dtype) + 0.5, (pixel // width + row0).to(dtype) + 0.5


def composite_band(attrs: torch.Tensor, spans: torch.Tensor, row0: int, row1: int, width: int) -> torch.Tensor:
    """Front-to-back compositing of one band of rows.

    Args:
        attrs: [6 + FEATURES, V] per Gaussian (columns front to back): mean u, v (px),
            a / 2, b, c / 2 of the conic [[a, b], [b, c]], opacity, then the composited features
            (R, G, B, depth). Channel-first, so that gathers and their backward scatters work on
            contiguous rows.
        spans: [S, 4] the band's row spans (gaussian, v, u_lo, u_hi), see :func:`row_spans`.
    Returns:
        [FEATURES + 1, (row1 - row0) * width]: sum of w_i * features_i and the accumulated
        alpha (sum of w_i) per pixel, row-major.
    """
    num_pixels = (row1 - row0) * width
    gaussian, pixel = _band_pairs(spans, attrs.shape[1], row0, row1, width)
    with torch.no_grad():
        centre_u, centre_v = _pixel_centres(pixel, row0, width, attrs.dtype)
        alpha, sigma = _pair_alpha(attrs.detach()[:6].index_select(1, gaussian).unbind(0), centre_u, centre_v)
        counted = (sigma >= 0) & (alpha >= ALPHA_MIN)
        log_transmit = torch.log1p(-torch.where(counted, alpha, torch.zeros_like(alpha)))
        # log of the transmittance after each pair; the pixel stops before reaching 1e-4
        log_after = _segment_exclusive_cumsum(log_transmit, _segment_starts(pixel, num_pixels)) + log_transmit
        keep = torch.nonzero(counted & (log_after > math.log(TRANSMITTANCE_MIN))).squeeze(-1)
        gaussian, pixel, centre_u, centre_v = gaussian[keep], pixel[keep], centre_u[keep], centre_v[keep]
        starts = _segment_starts(pixel, num_pixels)
    rows = attrs.index_select(1, gaussian).unbind(0)
    alpha, _ = _pair_alpha(rows, centre_u, centre_v)
    transmittance = torch.exp(_segment_exclusive_cumsum(torch.log1p(-alpha), starts)).to(alpha.dtype)
    weight = alpha * transmittance
    per_pair = torch.stack([weight * feature for feature in rows[6:]] + [weight])
    out = torch.zeros(FEATURES + 1, num_pixels, dtype=attrs.dtype, device=attrs.device)
    return out.index_add(1, pixel, per_pair)


def rasterize(attrs: torch.Tensor, spans: torch.Tensor, width: int, height: int, pair_budget: int) -> torch.Tensor:
    """Composite all Gaussians into [FEATURES + 1, height * width], band by band.

    ``attrs`` and ``spans`` as in :func:`composite_band`, for all drawn Gaussians front to back.
    Bands are checkpointed when there are several, so that the autograd state of one band at a
    time is held in memory.
    """
    bands = plan_bands(spans, height, pair_budget)
    outputs = []
    for row0, row1 in bands:
        band_spans = spans[(spans[:, 1] >= row0) & (spans[:, 1] < row1)]
        if len(bands) > 1 and attrs.requires_grad:
            outputs.append(checkpoint(composite_band, attrs, band_spans, row0, row1, width, use_reentrant=False))
        else:
            outputs.append(composite_band(attrs, band_spans, row0, row1, width))
    return torch.cat(outputs, dim=1)


def render_torch(gaussians: GaussianParams, camera: Camera, background: torch.Tensor,
                 scale_modifier: float = 1.0, pair_budget: int | None = None) -> RenderOutput:
    """Render one view with the pure-PyTorch rasterizer (see the module docstring for the rules).

    ``pair_budget``: most (Gaussian, pixel) pairs composited at once (default by device type,
    :data:`PAIR_BUDGET`); larger images are split into checkpointed bands of rows.
    """
    means = gaussians.means
    dtype, device = means.dtype, means.device
    if pair_budget is None:
        pair_budget = PAIR_BUDGET.get(device.type, PAIR_BUDGET["cuda"])
    cam = Pinhole.from_camera(camera, dtype, device)
    proj = project_gaussians(gaussians, cam, scale_modifier)
    num = gaussians.num

    # means2d [N, 2] is the tensor whose .grad is the screen-space gradient: it sits in the graph
    # between the projection and the compositing.
    means2d = torch.zeros(num, 2, dtype=dtype, device=device).index_put((proj.ids,), proj.means2d)
    if means2d.requires_grad:
        means2d.retain_grad()
    colors = colors_of(gaussians, proj.ids, camera.camera_center.to(device=device, dtype=dtype))
    attrs = torch.cat([
        means2d.index_select(0, proj.ids).T, 0.5 * proj.conics[:, 0:1].T, proj.conics[:, 1:2].T,
        0.5 * proj.conics[:, 2:3].T, proj.opacities.unsqueeze(0), colors.T, proj.depths.unsqueeze(0),
    ], dim=0)
    boxes = pixel_boxes(proj.means2d, proj.radii, camera.width, camera.height)
    spans = row_spans(proj.means2d, proj.conics, proj.opacities, boxes)
    accum = rasterize(attrs, spans, camera.width, camera.height, pair_budget)
    accum = accum.reshape(FEATURES + 1, camera.height, camera.width)

    alpha = accum[FEATURES:]
    background = background.to(device=device, dtype=dtype).reshape(3, 1, 1)
    image = accum[:3] + (1.0 - alpha) * background
    radii = torch.zeros(num, dtype=torch.int32, device=device)
    radii[proj.ids] = proj.radii.amax(dim=-1).to(torch.int32)
    return RenderOutput(image=image, alpha=alpha, depth=accum[3:4], radii=radii, means2d=means2d,
                        visible=radii > 0)
