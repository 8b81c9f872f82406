"""Deformation field of the 4D Gaussians: HexPlane (K-planes) features + small MLP heads (SPEC 3).

A point (x, y, z) at time t is mapped to a 128-dim feature by six planes per scale
(xy, xz, yz over space; xt, yt, zt over space-time), sampled bilinearly with border padding and
MULTIPLIED feature-wise; the four scales (spatial resolution 64 * m, m = 1, 2, 4, 8; time
resolution 25 at every scale) are concatenated. An MLP turns the feature into offsets of the
position, the log-scale and the raw quaternion (and, built but disabled by default, the opacity
logit).

Storage: the plane over axes (a, b) is a [features, res_b, res_a] array (the layout of the
released code: the first axis ``a`` is the grid's width, i.e. the x coordinate of
``grid_sample``). The three same-shape planes of a scale are stored stacked in one parameter,
``spatial_planes[s]`` [3, C, R, R] (xy, xz, yz) and ``time_planes[s]`` [3, C, T, R] (xt, yt, zt),
so that one ``grid_sample`` call samples three planes: 8 calls for the whole field.
:meth:`HexPlaneField.plane` gives one plane as [1, C, res_b, res_a].

Choices (see the README for the differences from the released code):

* ``align_corners=True`` (as the released sampler): grid coordinate -1 / +1 is the centre of the
  first / last texel, so a plane of resolution R has R - 1 cells over [-1, 1].
* Space: ``u = xyz / bounds`` (box [-1.6, 1.6]^3 -> [-1, 1]). The released code writes the box as
  (max, min) and so samples at ``-xyz / bounds``: a mirror of the grid index, which with i.i.d.
  initial values is the same model up to a relabelling of texels; ``mirror_box`` reproduces it.
* Time: ``time_mapping = "full"`` (default, ours) maps t in [0, 1) to the grid coordinate
  ``2 t - 1`` and uses the whole axis; ``"released"`` (alias ``"half"``) uses t directly as the
  coordinate in [-1, 1], as the released code, so only the upper half of the 25 time texels
  (rows 12..24) is used.
* Linear layers: Xavier-uniform weights, PyTorch's default biases (the released initializer sets
  the weights twice and never the biases).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, List, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stag4d.settings import ConfigError, check_settings, setting

TIME_MAPPINGS = ("full", "released", "half")
SPATIAL_PLANES = ("xy", "xz", "yz")  # axis pairs (a, b) = (0, 1), (0, 2), (1, 2)
TIME_PLANES = ("xt", "yt", "zt")  # axis pairs (a, t) = (0, 3), (1, 3), (2, 3)
_SPATIAL_AXES = ((0, 1), (0, 2), (1, 2))
CONFIG_FORMAT = 2  # of the dict to_dict() writes (deformation.pt's "config"); 1 = the names before the typed config


@dataclass
class DeformationConfig:
    """Settings of the HexPlane field and its MLP (defaults = the released STAG4D values, except
    ``time_mapping``, see the module docstring)."""

    time_mapping: str = setting("full", "time -> grid coordinate: full = 2t-1 (ours); released = half = t (the "
                                "released quirk: half of the time cells)", choices=TIME_MAPPINGS)
    bounds: float = setting(1.6, "HexPlane box [-bounds, bounds]^3", gt=0)
    kplanes_features: int = setting(32, "features per plane", ge=1)
    kplanes_resolution: List[int] = setting([64, 64, 64, 25], "[R, R, R, T]: base spatial resolution (equal "
                                            "entries) and time resolution", ge=2)
    multires: List[int] = setting([1, 2, 4, 8], "spatial resolution multipliers, one scale each", ge=1, min_items=1)
    net_width: int = setting(64, "MLP width", ge=1)
    deform_opacity: bool = setting(False, "apply the opacity head (the released model does not)")
    align_corners: bool = setting(True, "grid_sample's align_corners (released: true)")
    mirror_box: bool = setting(False, "sample the planes at -xyz / bounds, as the released code's box written as "
                               "(max, min); the same model up to a relabelling of texels")
    plane_init_low: float = setting(0.1, "spatial planes start uniform in [plane_init_low, plane_init_high]")
    plane_init_high: float = setting(0.5, "see plane_init_low")

    def check(self) -> None:
        resolution = list(self.kplanes_resolution)
        if len(resolution) != 4 or len(set(resolution[:3])) != 1:
            raise ConfigError(f"kplanes_resolution={resolution}: give [R, R, R, T] with equal spatial entries, "
                              "e.g. [64, 64, 64, 25]")

    @property
    def spatial_resolution(self) -> int:
        """Base resolution of the spatial axes (times each ``multires`` entry)."""
        return int(self.kplanes_resolution[0])

    @property
    def time_resolution(self) -> int:
        """Resolution of the time axis (the same at every scale)."""
        return int(self.kplanes_resolution[3])

    @property
    def feature_dim(self) -> int:
        """Length of the concatenated feature: features x number of scales."""
        return self.kplanes_features * len(self.multires)

    def to_dict(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DeformationConfig":
        """From :meth:`to_dict`'s output, or from a format-1 dict (the names used before the typed config)."""
        values = dict(values)
        if values.pop("format", 1) == 1 and "features" in values:
            values["kplanes_features"] = values.pop("features")
            values["kplanes_resolution"] = [values.pop("spatial_resolution")] * 3 + [values.pop("time_resolution")]
        known = {f.name for f in fields(cls)}
        config = cls(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if k in known})
        check_settings(config)
        return config


def sample_planes(planes: Tensor, coords: Tensor, align_corners: bool) -> Tensor:
    """Bilinear samples [P, C, M] of P stacked planes [P, C, H, W] at coords [P, M, 2] (u -> W, v -> H).

    Border padding: points outside [-1, 1] take the edge value.
    """
    out = F.grid_sample(planes, coords.unsqueeze(1), mode="bilinear", padding_mode="border",
                        align_corners=align_corners)  # [P, C, 1, M]
    return out.squeeze(2)


class HexPlaneField(nn.Module):
    """Six planes per scale, multiplied; scales concatenated.

    Parameters:
        spatial_planes[s]: [3, C, R_s, R_s], planes xy, xz, yz (plane (a, b) as [C, res_b, res_a]).
        time_planes[s]: [3, C, T, R_s], planes xt, yt, zt (as [C, res_t, res_a]).
    """

    def __init__(self, cfg: DeformationConfig):
        super().__init__()
        self.cfg = cfg
        c, t = cfg.kplanes_features, cfg.time_resolution
        self.spatial_planes = nn.ParameterList()
        self.time_planes = nn.ParameterList()
        for m in cfg.multires:
            r = cfg.spatial_resolution * m
            self.spatial_planes.append(nn.Parameter(torch.empty(3, c, r, r)))
            self.time_planes.append(nn.Parameter(torch.empty(3, c, t, r)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Planes without t uniform in [low, high]; planes with t set to 1 (no motion at start)."""
        for planes in self.spatial_planes:
            planes.uniform_(self.cfg.plane_init_low, self.cfg.plane_init_high)
        for planes in self.time_planes:
            planes.fill_(1.0)

    @property
    def num_scales(self) -> int:
        return len(self.cfg.multires)

    @property
    def feature_dim(self) -> int:
        return self.cfg.feature_dim

    def plane(self, scale: int, name: str) -> Tensor:
        """One plane as [1, C, res_b, res_a] (a view: edits go to the parameter), e.g. ``plane(0, "xt")``."""
        if name in SPATIAL_PLANES:
            return self.spatial_planes[scale][SPATIAL_PLANES.index(name)].unsqueeze(0)
        if name in TIME_PLANES:
            return self.time_planes[scale][TIME_PLANES.index(name)].unsqueeze(0)
        raise KeyError(f"unknown plane {name!r}; one of {SPATIAL_PLANES + TIME_PLANES}")

    def normalize_points(self, xyz: Tensor) -> Tensor:
        """Grid coordinates [N, 3] of world points [N, 3]: the box [-bounds, bounds]^3 -> [-1, 1]
        (mirrored with ``mirror_box``)."""
        return xyz / (-self.cfg.bounds if self.cfg.mirror_box else self.cfg.bounds)

    def time_coordinate(self, times: Tensor) -> Tensor:
        """Grid coordinate [B] of normalized times t = i / T in [0, 1) [B] (see ``time_mapping``)."""
        if self.cfg.time_mapping == "full":
            return 2.0 * times - 1.0
        return times

    def spatial_features(self, coords: Tensor) -> list[Tensor]:
        """Per scale, the product of the three spatial planes [N, C] at grid coordinates [N, 3]."""
        # column slices, not list indices: a list index is copied to the device from pageable
        # memory, which waits for the device queue to drain (a host sync)
        pairs = torch.stack([coords[:, a : b + 1 : b - a] for a, b in _SPATIAL_AXES])  # [3, N, 2]
        out = []
        for planes in self.spatial_planes:
            samples = sample_planes(planes, pairs, self.cfg.align_corners)  # [3, C, N]
            first, second, third = samples.unbind(0)  # see temporal_features
            out.append((first * second * third).transpose(0, 1))
        return out

    def temporal_features(self, coords: Tensor, time_coords: Tensor) -> list[Tensor]:
        """Per scale, the product of the three space-time planes [B, N, C].

        Args:
            coords: [N, 3] grid coordinates of the points.
            time_coords: [B] grid coordinates of the times.
        """
        n, b = coords.shape[0], time_coords.shape[0]
        tcol = time_coords.to(coords).view(b, 1, 1).expand(b, n, 1)  # [B, N, 1]
        pairs = torch.stack(
            [torch.cat([coords[:, axis : axis + 1].expand(b, n, 1), tcol], dim=-1).reshape(b * n, 2) for axis in range(3)]
        )  # [3, B*N, 2]
        out = []
        for planes in self.time_planes:
            samples = sample_planes(planes, pairs, self.cfg.align_corners)  # [3, C, B*N]
            # unbind, not three selects: its backward stacks the three gradients in one kernel,
            # where each select's backward fills a zero [3, C, M] tensor and they are then added
            first, second, third = samples.unbind(0)
            prod = first * second * third  # [C, B*N]
            out.append(prod.view(-1, b, n).permute(1, 2, 0))
        return out

    def forward(self, xyz: Tensor, times: Tensor) -> Tensor:
        """Features [B, N, C * scales] of world points xyz [N, 3] at each of B times [B].

        The spatial planes are sampled once and shared by the B times.
        """
        coords = self.normalize_points(xyz)
        spatial = self.spatial_features(coords)
        temporal = self.temporal_features(coords, self.time_coordinate(times))
        return torch.cat([s.unsqueeze(0) * t for s, t in zip(spatial, temporal)], dim=-1)


def _head(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out))


@dataclass
class DeformationOutput:
    """Deformed raw parameters at B times (quaternions not yet normalized).

    Attributes:
        means: [B, N, 3]. log_scales: [B, N, 3]. quats: [B, N, 4] (wxyz, raw).
        opacity_logits: [B, N], or None when the opacity is not deformed.
    """

    means: Tensor
    log_scales: Tensor
    quats: Tensor
    opacity_logits: Tensor | None = None


class DeformationField(nn.Module):
    """HexPlane features -> Linear(128, 64) -> four heads (d_position, d_scale, d_rotation, d_opacity)."""

    def __init__(self, cfg: DeformationConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else DeformationConfig()
        self.grid = HexPlaneField(self.cfg)
        w = self.cfg.net_width
        self.feature_out = nn.Linear(self.cfg.feature_dim, w)
        self.position_head = _head(w, 3)
        self.scale_head = _head(w, 3)
        self.rotation_head = _head(w, 4)
        self.opacity_head = _head(w, 1)  # built as in the released model; used only with deform_opacity
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, gain=1.0)

    def mlp_parameters(self) -> list[nn.Parameter]:
        """Everything but the planes (the optimizer's "deformation" group)."""
        return [p for name, p in self.named_parameters() if not name.startswith("grid.")]

    def grid_parameters(self) -> list[nn.Parameter]:
        """The planes (the optimizer's "grid" group)."""
        return list(self.grid.parameters())

    def hidden(self, xyz: Tensor, times: Tensor) -> Tensor:
        """MLP trunk output [B, N, W] for points [N, 3] at times [B]."""
        return self.feature_out(self.grid(xyz, times))

    def forward(self, means: Tensor, log_scales: Tensor, quats: Tensor, opacity_logits: Tensor | None,
                times: Tensor) -> DeformationOutput:
        """Deform canonical Gaussians to each of B times.

        Args:
            means: [N, 3]; log_scales: [N, 3]; quats: [N, 4] raw; opacity_logits: [N] or None;
            times: [B] normalized times in [0, 1).
        Returns:
            means + d_position, log_scales + d_scale, quats + d_rotation (raw), each [B, N, *];
            opacity logits + d_opacity [B, N] only with ``deform_opacity``.
        """
        h = self.hidden(means, times)
        out = DeformationOutput(
            means=means.unsqueeze(0) + self.position_head(h),
            log_scales=log_scales.unsqueeze(0) + self.scale_head(h),
            quats=quats.unsqueeze(0) + self.rotation_head(h),
        )
        if self.cfg.deform_opacity and opacity_logits is not None:
            out.opacity_logits = opacity_logits.unsqueeze(0) + self.opacity_head(h).squeeze(-1)
        return out
