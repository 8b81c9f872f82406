"""Real spherical harmonics up to degree 3, in the convention of 3D Gaussian Splatting.

A Gaussian's colour seen along the unit direction ``d`` (from the camera centre to the Gaussian) is
``max(sum_k coeffs[k] * basis_k(d) + 0.5, 0)``; coefficient 0 is the view-independent "DC" term.
The basis constants are those of the real SH basis with the sign convention 3DGS and gsplat use,
so that SH coefficients trained with either backend mean the same colour.
"""
from __future__ import annotations

import torch

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_coeffs(degree: int) -> int:
    """Coefficients per colour channel for SH of ``degree`` (0..3)."""
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """SH basis [N, (degree + 1) ** 2] evaluated at directions [N, 3] (normalized here)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    columns = [torch.full_like(dirs[:, 0], SH_C0)]
    if degree == 0:
        return torch.stack(columns, dim=-1)
    unit = dirs / dirs.norm(dim=-1, keepdim=True)
    x, y, z = unit.unbind(-1)
    columns += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        columns += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
        if degree >= 3:
            columns += [
                SH_C3[0] * y * (3.0 * xx - yy),
                SH_C3[1] * xy * z,
                SH_C3[2] * y * (4.0 * zz - xx - yy),
                SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
                SH_C3[4] * x * (4.0 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy),
                SH_C3[6] * x * (xx - 3.0 * yy),
            ]
    return torch.stack(columns, dim=-1)


def eval_sh(coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Raw SH value [N, 3] = sum_k coeffs[:, k] * basis_k(dirs), before the +0.5 offset.

    Args:
        coeffs: [N, K, 3] with K = (degree + 1) ** 2.
        dirs: [N, 3] view directions (any length).
    """
    degree = round(coeffs.shape[1] ** 0.5) - 1
    basis = sh_basis(degree, dirs)  # [N, K]
    return (basis.unsqueeze(-1) * coeffs).sum(dim=1)


def sh_to_color(coeffs: torch.Tensor, means: torch.Tensor, camera_center: torch.Tensor) -> torch.Tensor:
    """View-dependent RGB [N, 3] of Gaussians at ``means`` [N, 3] seen from ``camera_center`` [3]."""
    dirs = means - camera_center.to(means)
    return torch.clamp_min(eval_sh(coeffs, dirs) + 0.5, 0.0)


def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    """The DC coefficient that renders as ``rgb`` (any shape)."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: torch.Tensor) -> torch.Tensor:
    """Colour (before the clamp) of a DC coefficient (any shape)."""
    return dc * SH_C0 + 0.5
