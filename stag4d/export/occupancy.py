"""The Gaussians' occupancy on a regular grid: the field a mesh is extracted from.

    a_i(x) = min(0.999, o_i exp(-0.5 (x - mu_i)^T Sigma_i^-1 (x - mu_i)))   (a Gaussian's alpha at x)
    S(x)   = -sum_i log(1 - a_i(x))          occupancy(x) = 1 - exp(-S(x)) = 1 - prod_i (1 - a_i(x))
    C(x)   = sum_i a_i(x) rgb_i              (colour: C / A at a point, A = sum_i a_i)

with Sigma_i = R_i S_i^2 R_i^T the 3DGS covariance and the rasterizer's alpha clamp. Occupancy
composes the Gaussians' opacities at a point as the rasterizer composes them along a ray: a lone
Gaussian's level set occupancy = 0.5 has exactly the silhouette of its rendered alpha = 0.5, and
inside a solid object the field saturates at 1 instead of growing with the number of overlapping
Gaussians (a plain sum of o_i g_i would push the level set outwards, about 2.5 sigma past the
outermost centres for a densely filled body, instead of about 1 sigma).

Each Gaussian only touches the grid points where its alpha is at least 1/255 (the rasterizer skips
smaller ones) within ``cutoff`` sigmas: an ellipsoid of min(cutoff, sqrt(2 ln(255 o))) sigmas, so a
faint Gaussian reaches less far. The points of the ellipsoid's axis-aligned bounding box are
enumerated and the rest masked, so the result equals the full product truncated that way. The (Gaussian, grid point) pairs are evaluated in chunks of at most
``pair_budget`` (a Gaussian larger than that is cut into slabs), so memory stays bounded at any
resolution. Each covariance gets a low-pass of (``lowpass`` x cell size)^2 on its diagonal, as the
rasterizer's 0.3 px filter: a Gaussian thinner than a cell still reaches a grid point instead of
falling between samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from stag4d.rasterizer.sh import sh_dc_to_rgb
from stag4d.rasterizer.torch_backend import quat_to_rotmat

CUTOFF_SIGMAS = 3.0  # a Gaussian's kernel is exp(-4.5) = 1.1% of its opacity at the cut
LOWPASS_CELLS = 0.5  # standard deviation of the low-pass, in cells
PAIR_BUDGET = 1 << 22  # (Gaussian, grid point) pairs per chunk: about 40 floats each
MIN_OPACITY = 1.0 / 255.0  # Gaussians below this are invisible in any render: left out of the box
ALPHA_MAX = 0.999  # the rasterizer's clamp of a Gaussian's alpha


@dataclass
class GaussianCloud:
    """Activated parameters of N Gaussians (one frame, or the canonical set).

    Attributes:
        means [N, 3]; scales [N, 3] (standard deviations); quats [N, 4] (w, x, y, z);
        opacities [N] in [0, 1]; colors [N, 3] RGB in [0, 1] (SH degree 0, view-independent).
    """

    means: Tensor
    scales: Tensor
    quats: Tensor
    opacities: Tensor
    colors: Tensor

    @staticmethod
    def from_params(gaussians) -> "GaussianCloud":
        """From raw :class:`~stag4d.rasterizer.types.GaussianParams` (log-scales, logits, SH)."""
        rgb = gaussians.colors if gaussians.sh is None else sh_dc_to_rgb(gaussians.sh[:, 0])
        colors = rgb.detach().clamp(0.0, 1.0)
        return GaussianCloud(gaussians.means.detach(), torch.exp(gaussians.log_scales.detach()),
                             torch.nn.functional.normalize(gaussians.quats.detach(), dim=-1),
                             torch.sigmoid(gaussians.opacity_logits.detach()), colors)

    @property
    def num(self) -> int:
        return self.means.shape[0]


@dataclass
class GridBox:
    """A regular grid: point (i, j, k) is at ``origin + spacing * (i, j, k)``; ``shape`` points per axis."""

    origin: np.ndarray
    spacing: float
    shape: tuple[int, int, int]

    def points(self, device: torch.device | str = "cpu") -> Tensor:
        """All grid points [X, Y, Z, 3] (for tests and small grids)."""
        axes = [torch.arange(n, dtype=torch.float32, device=device) * self.spacing + float(o)
                for n, o in zip(self.shape, self.origin)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def axis_extents(cloud: GaussianCloud, sigmas: float = CUTOFF_SIGMAS, extra_variance: float = 0.0) -> Tensor:
    """Half-widths [N, 3] of the axis-aligned boxes around the ``sigmas``-sigma ellipsoids."""
    return sigmas * torch.sqrt(covariances(cloud, extra_variance).diagonal(dim1=-2, dim2=-1))


def object_box(cloud: GaussianCloud, resolution: int, bounds: float | None = None, margin_cells: int = 2) -> GridBox:
    """A grid of ``resolution`` cells along the longest side of the box that holds every visible
    Gaussian's 3-sigma ellipsoid (clipped to [-bounds, bounds]^3, where the deformation field is
    defined, when given), plus ``margin_cells`` empty cells on each side so that surfaces close."""
    visible = cloud.opacities >= MIN_OPACITY
    if not bool(visible.any()):
        raise ValueError("no Gaussian has an opacity of at least 1/255: nothing to extract")
    sub = GaussianCloud(*(t[visible] for t in (cloud.means, cloud.scales, cloud.quats, cloud.opacities, cloud.colors)))
    reach = axis_extents(sub)
    low = (sub.means - reach).amin(dim=0).cpu().double().numpy()
    high = (sub.means + reach).amax(dim=0).cpu().double().numpy()
    if bounds is not None:
        low, high = np.maximum(low, -bounds), np.minimum(high, bounds)
    spacing = float((high - low).max()) / resolution
    cells = np.ceil((high - low) / spacing - 1e-9).astype(int)
    origin = low - margin_cells * spacing
    shape = tuple(int(c) + 1 + 2 * margin_cells for c in cells)
    return GridBox(origin, spacing, shape)  # type: ignore[arg-type]


def squared_reach(opacities: Tensor, cutoff: float = CUTOFF_SIGMAS) -> Tensor:
    """Per Gaussian, the squared Mahalanobis radius [N] within which it is evaluated: where its
    alpha o exp(-m / 2) is at least 1/255, at most ``cutoff`` sigmas (0 for o < 1/255: never)."""
    return torch.clamp(2.0 * torch.log((opacities * 255.0).clamp(min=1.0)), max=cutoff * cutoff)


def covariances(cloud: GaussianCloud, extra_variance: float = 0.0) -> Tensor:
    """Covariances [N, 3, 3] = R S^2 R^T (+ ``extra_variance`` on the diagonal)."""
    rotation = quat_to_rotmat(cloud.quats)
    m = rotation * cloud.scales.unsqueeze(-2)
    cov = m @ m.transpose(-1, -2)
    if extra_variance > 0:
        cov = cov + extra_variance * torch.eye(3, dtype=cov.dtype, device=cov.device)
    return cov


def _work_items(lo: Tensor, counts: Tensor, pair_budget: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cut each Gaussian's box into x-slabs of at most ``pair_budget`` points (at least one x-plane).

    Returns per item: the Gaussian's index [M], the first grid index [M, 3], the point counts [M, 3].
    """
    gaussian = torch.nonzero(counts.prod(dim=1) > 0).squeeze(1)
    lo, counts = lo[gaussian], counts[gaussian]
    plane = counts[:, 1] * counts[:, 2]
    slab = torch.clamp(pair_budget // plane, min=1)
    num_slabs = (counts[:, 0] + slab - 1) // slab
    item_gaussian = torch.repeat_interleave(torch.arange(len(gaussian), device=lo.device), num_slabs)
    first = torch.cumsum(num_slabs, 0) - num_slabs
    slab_index = torch.arange(len(item_gaussian), device=lo.device) - first[item_gaussian]
    item_lo = lo[item_gaussian].clone()
    item_counts = counts[item_gaussian].clone()
    item_lo[:, 0] += slab_index * slab[item_gaussian]
    item_counts[:, 0] = torch.minimum(slab[item_gaussian], counts[item_gaussian, 0] - slab_index * slab[item_gaussian])
    return gaussian[item_gaussian], item_lo, item_counts


def _chunks(sizes: Tensor, budget: int) -> list[tuple[int, int]]:
    """Consecutive ranges [start, end) of items whose sizes add up to at most ``budget`` (one item at least)."""
    ends = []
    total, start = 0, 0
    for index, size in enumerate(sizes.tolist()):
        if total and total + size > budget:
            ends.append((start, index))
            start, total = index, 0
        total += size
    if start < len(sizes):
        ends.append((start, len(sizes)))
    return ends


@torch.no_grad()
def occupancy_grid(cloud: GaussianCloud, box: GridBox, cutoff: float = CUTOFF_SIGMAS, lowpass: float = LOWPASS_CELLS,
                   pair_budget: int = PAIR_BUDGET, progress: bool = True) -> tuple[Tensor, Tensor]:
    """Occupancy [X, Y, Z] in [0, 1) and the colour grid [X, Y, Z, 4] (C, then A = sum of the
    alphas) on the grid ``box`` (float32, on the Gaussians' device); see the module docstring."""
    device = cloud.means.device
    cov = covariances(cloud, (lowpass * box.spacing) ** 2).float()
    precision = torch.linalg.inv(cov)
    limit = squared_reach(cloud.opacities.float(), cutoff)
    reach = torch.sqrt(limit.unsqueeze(1) * cov.diagonal(dim1=-2, dim2=-1))
    origin = torch.as_tensor(box.origin, dtype=torch.float32, device=device)
    shape = torch.tensor(box.shape, device=device)
    lo = torch.ceil((cloud.means - reach - origin) / box.spacing).long().clamp(min=0)
    hi = torch.floor((cloud.means + reach - origin) / box.spacing).long()
    hi = torch.minimum(hi, shape - 1)
    counts = (hi - lo + 1).clamp(min=0)
    counts[limit <= 0] = 0
    gaussian, item_lo, item_counts = _work_items(lo, counts, pair_budget)
    sizes = item_counts.prod(dim=1)

    nx, ny, nz = box.shape
    optical = torch.zeros(nx * ny * nz, dtype=torch.float32, device=device)  # S
    color = torch.zeros(nx * ny * nz, 4, dtype=torch.float32, device=device)  # C, A
    # per work item: offset of its first grid point from the centre, the quadratic form's six
    # coefficients, the opacity, its point counts, its squared reach; gathered once per pair
    first_offset = origin + item_lo.float() * box.spacing - cloud.means[gaussian]
    p = precision[gaussian]
    item_data = torch.cat([first_offset, p[:, 0, 0:1], p[:, 1, 1:2], p[:, 2, 2:3], 2 * p[:, 0, 1:2], 2 * p[:, 0, 2:3],
                           2 * p[:, 1, 2:3], cloud.opacities[gaussian, None], item_counts[:, 2:3].float(),
                           (item_counts[:, 1:2] * item_counts[:, 2:3]).float(), limit[gaussian, None]], dim=1)
    first_flat = (item_lo[:, 0] * ny + item_lo[:, 1]) * nz + item_lo[:, 2]
    for start, end in tqdm(_chunks(sizes, pair_budget), desc="occupancy grid", unit="chunk", disable=not progress,
                           leave=False):
        size = sizes[start:end]
        item = torch.repeat_interleave(torch.arange(end - start, device=device), size)
        local = (torch.arange(int(size.sum()), device=device) - (torch.cumsum(size, 0) - size)[item]).float()
        d = item_data[start:end][item]  # [P, 13]
        i = torch.div(local, d[:, 11], rounding_mode="floor")  # exact: counts are far below 2^24
        rest = local - i * d[:, 11]
        j = torch.div(rest, d[:, 10], rounding_mode="floor")
        k = rest - j * d[:, 10]
        dx = d[:, 0] + i * box.spacing
        dy = d[:, 1] + j * box.spacing
        dz = d[:, 2] + k * box.spacing
        mahalanobis = (d[:, 3] * dx * dx + d[:, 4] * dy * dy + d[:, 5] * dz * dz + d[:, 6] * dx * dy
                       + d[:, 7] * dx * dz + d[:, 8] * dy * dz)
        keep = torch.nonzero(mahalanobis <= d[:, 12]).squeeze(1)
        alpha = (d[keep, 9] * torch.exp(-0.5 * mahalanobis[keep])).clamp(max=ALPHA_MAX)
        flat = (first_flat[start:end][item[keep]] + (i[keep].long() * ny + j[keep].long()) * nz + k[keep].long())
        optical.index_add_(0, flat, -torch.log1p(-alpha))
        rgb = cloud.colors[gaussian[start:end][item[keep]]]
        color.index_add_(0, flat, torch.cat([alpha.unsqueeze(1) * rgb, alpha.unsqueeze(1)], dim=1))
    return -torch.expm1(-optical).view(nx, ny, nz), color.view(nx, ny, nz, 4)


def occupancy_at(cloud: GaussianCloud, points: Tensor, cutoff: float | None = CUTOFF_SIGMAS,
                 extra_variance: float = 0.0) -> Tensor:
    """Occupancy at arbitrary points [P, 3] as the product over every Gaussian (O(P N): the
    reference for tests and small inputs), truncated as :func:`occupancy_grid` (None: not at all)."""
    cov = covariances(cloud, extra_variance).double()
    precision = torch.linalg.inv(cov)
    offset = points.double().unsqueeze(1) - cloud.means.double().unsqueeze(0)  # [P, N, 3]
    mahalanobis = torch.einsum("pni,nij,pnj->pn", offset, precision, offset)
    alpha = (cloud.opacities.double() * torch.exp(-0.5 * mahalanobis)).clamp(max=ALPHA_MAX)
    if cutoff is not None:
        limit = squared_reach(cloud.opacities.double(), cutoff)
        alpha = torch.where(mahalanobis <= limit, alpha, torch.zeros_like(alpha))
    return (1.0 - torch.prod(1.0 - alpha, dim=1)).float()


__all__ = [
    "ALPHA_MAX",
    "CUTOFF_SIGMAS",
    "LOWPASS_CELLS",
    "MIN_OPACITY",
    "PAIR_BUDGET",
    "GaussianCloud",
    "GridBox",
    "axis_extents",
    "covariances",
    "object_box",
    "occupancy_at",
    "occupancy_grid",
    "squared_reach",
]
