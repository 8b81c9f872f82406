"""The 4D Gaussian model: canonical 3D Gaussians + a HexPlane deformation field (SPEC 3, 7, 8).

* :class:`GaussianModel4D` holds the canonical parameters (raw: positions, SH, log-scales,
  quaternions wxyz, opacity logits) and ``deformation`` (:class:`deformation.DeformationField`).
  ``gaussians_at(None)`` is the canonical set (coarse stage); ``gaussians_at(t)`` applies the
  deformation at normalized time t (fine stage).
* On disk (SPEC 8): ``model.ply`` (3DGS PLY, raw canonical values, :mod:`stag4d.gaussians.ply`) and
  ``deformation.pt`` (``{"format", "config", "state_dict"}``) in one folder.
* Settings: :class:`ModelConfig` (initial points, SH degree) and the deformation field's
  :class:`~stag4d.gaussians.deformation.DeformationConfig`; the optimizer over these parameters
  is built in :mod:`stag4d.training.optim`.

Initial colour: the released code draws SH DC coefficients uniform in [0, 1/255) (it meant
near-black RGB, but passes that through RGB -> SH and back, so the stored SH values are what it
drew). We keep those faithful values; with the 3DGS colour ``0.5 + C0 * sh`` they render as
mid-grey (about 0.5), not black.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from stag4d.errors import DataError
from stag4d.files import host_copy, torch_save
from stag4d.gaussians import knn
from stag4d.gaussians.deformation import DeformationConfig, DeformationField, DeformationOutput
from stag4d.gaussians.ply import GaussianArrays, read_gaussian_ply, write_gaussian_ply
from stag4d.rasterizer.types import GaussianBatch, GaussianParams
from stag4d.settings import setting

MODEL_PLY = "model.ply"
DEFORMATION_FILE = "deformation.pt"
MODEL_FILES = (MODEL_PLY, DEFORMATION_FILE)  # what a saved model folder holds
DEFORMATION_FORMAT = 1

# Optimizer group name (the released names) -> per-Gaussian parameter attribute of the model.
PER_GAUSSIAN_GROUPS: dict[str, str] = {
    "xyz": "means",
    "f_dc": "sh_dc",
    "f_rest": "sh_rest",
    "opacity": "opacity_logits",
    "scaling": "log_scales",
    "rotation": "quats",
}
INIT_SH_DC_MAX = 1.0 / 255.0  # released: SH DC uniform in [0, 1/255)
INIT_OPACITY = 0.1


@dataclass
class ModelConfig:
    """The canonical Gaussians at the start (SPEC 3)."""

    num_pts: int = setting(10000, "initial Gaussians, uniform in a ball", ge=1)
    init_radius: float = setting(0.5, "radius of that ball", gt=0)
    sh_degree: int = setting(0, "spherical-harmonics degree of the colours", ge=0, le=3)


def inverse_sigmoid(x: Tensor) -> Tensor:
    return torch.log(x / (1.0 - x))


class GaussianModel4D(nn.Module):
    """Canonical 3D Gaussians and their deformation field.

    Parameters (raw values):
        means [N, 3]; sh_dc [N, 1, 3]; sh_rest [N, K-1, 3] with K = (sh_degree + 1)^2;
        log_scales [N, 3]; quats [N, 4] (w, x, y, z; normalized where used); opacity_logits [N].
    """

    def __init__(self, sh_degree: int = 0, deformation: DeformationConfig | None = None):
        super().__init__()
        if not 0 <= sh_degree <= 3:
            raise DataError(f"sh_degree={sh_degree}: use 0..3")
        k_rest = (int(sh_degree) + 1) ** 2 - 1
        self.means = nn.Parameter(torch.empty(0, 3))
        self.sh_dc = nn.Parameter(torch.empty(0, 1, 3))
        self.sh_rest = nn.Parameter(torch.empty(0, k_rest, 3))
        self.log_scales = nn.Parameter(torch.empty(0, 3))
        self.quats = nn.Parameter(torch.empty(0, 4))
        self.opacity_logits = nn.Parameter(torch.empty(0))
        self.deformation = DeformationField(deformation)

    @classmethod
    def create(cls, model: ModelConfig, deformation: DeformationConfig, seed: int | None = None,
               device: torch.device | str = "cpu") -> "GaussianModel4D":
        """A new model on ``device`` with its random initial Gaussians (:meth:`initialize_random`)."""
        out = cls(model.sh_degree, deformation).to(device)
        out.initialize_random(model.num_pts, model.init_radius, seed)
        return out

    # ---- properties ----------------------------------------------------------------------
    @property
    def num(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return round((self.sh_rest.shape[1] + 1) ** 0.5) - 1

    @property
    def device(self) -> torch.device:
        return self.deformation.feature_out.weight.device

    @property
    def activated_scales(self) -> Tensor:
        """Canonical standard deviations [N, 3] = exp(log_scales)."""
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> Tensor:
        """Canonical opacities [N] = sigmoid(opacity_logits)."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def sh(self) -> Tensor:
        """All SH coefficients [N, K, 3]."""
        return torch.cat([self.sh_dc, self.sh_rest], dim=1)

    # ---- setting the Gaussians -----------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, but first resizes the per-Gaussian parameters to the saved N (resume).

        Build the optimizer after loading (it holds the parameter objects).
        """
        for attr in PER_GAUSSIAN_GROUPS.values():
            saved = state_dict.get(attr)
            if saved is not None and tuple(saved.shape) != tuple(getattr(self, attr).shape):
                setattr(self, attr, nn.Parameter(torch.zeros(saved.shape, device=self.device)))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def set_gaussians(self, means: Tensor, sh_dc: Tensor, sh_rest: Tensor, log_scales: Tensor, quats: Tensor,
                      opacity_logits: Tensor) -> None:
        """Replace the canonical parameters (new nn.Parameters on the model's device).

        Build the optimizer after this (it holds the parameter objects).
        """
        n = means.shape[0]
        k_rest = (self.sh_degree + 1) ** 2 - 1
        shapes = {"means": (n, 3), "sh_dc": (n, 1, 3), "sh_rest": (n, k_rest, 3), "log_scales": (n, 3),
                  "quats": (n, 4), "opacity_logits": (n,)}
        values = {"means": means, "sh_dc": sh_dc, "sh_rest": sh_rest, "log_scales": log_scales, "quats": quats,
                  "opacity_logits": opacity_logits}
        for name, value in values.items():
            if tuple(value.shape) != shapes[name]:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {shapes[name]}")
            setattr(self, name, nn.Parameter(value.detach().to(self.device, torch.float32).contiguous()))

    @torch.no_grad()
    def initialize_random(self, num_pts: int = 10000, radius: float = 0.5, seed: int | None = None) -> None:
        """SPEC 3 initialization: ``num_pts`` points uniform in the ball of ``radius``.

        SH DC uniform in [0, 1/255) (released; renders mid-grey), SH rest 0, opacity 0.1, isotropic
        scale sqrt(max(mean squared distance to the 3 nearest neighbours, 1e-7)), identity rotation.
        ``seed`` None draws from torch's global generator.
        """
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        u = torch.rand(num_pts, 4, generator=generator, dtype=torch.float64)
        phi = u[:, 0] * 2.0 * math.pi
        cos_theta = u[:, 1] * 2.0 - 1.0
        sin_theta = torch.sqrt((1.0 - cos_theta**2).clamp_min(0.0))
        r = radius * torch.pow(u[:, 2], 1.0 / 3.0)  # uniform in volume
        means = torch.stack([r * sin_theta * torch.cos(phi), r * sin_theta * torch.sin(phi), r * cos_theta], dim=1)
        sh_dc = torch.rand(num_pts, 1, 3, generator=generator) * INIT_SH_DC_MAX
        means = means.float().to(self.device)
        dist2 = knn.mean_sq_dist_knn3(means).clamp_min(1e-7)  # the CUDA extension when built, else exact torch
        log_scales = torch.log(torch.sqrt(dist2)).unsqueeze(1).repeat(1, 3)
        quats = torch.zeros(num_pts, 4)
        quats[:, 0] = 1.0
        opacity_logits = inverse_sigmoid(torch.full((num_pts,), INIT_OPACITY))
        k_rest = (self.sh_degree + 1) ** 2 - 1
        self.set_gaussians(means, sh_dc, torch.zeros(num_pts, k_rest, 3), log_scales, quats, opacity_logits)

    # ---- Gaussians at a time ---------------------------------------------------------------
    def gaussians_at(self, time: float | None, scale_modifier: float = 1.0) -> GaussianParams:
        """Gaussians to render: canonical (``time`` None) or deformed at normalized time ``time``.

        Deformed: means + d_pos, log_scales + d_scale, normalize(quats + d_rot); opacity unchanged
        (unless the deformation config enables it). ``scale_modifier`` multiplies the scales.
        """
        if time is None:
            return GaussianParams(means=self.means, log_scales=self._modified(self.log_scales, scale_modifier),
                                  quats=self.quats, opacity_logits=self.opacity_logits, sh=self.sh)
        return self.gaussians_at_times(torch.tensor([float(time)]), scale_modifier)[0]

    def gaussians_at_times(self, times: Tensor | Sequence[float], scale_modifier: float = 1.0) -> list[GaussianParams]:
        """Deformed Gaussians at each of B times [B], with one deformation (MLP) call for all."""
        return list(self.gaussian_batch_at_times(times, scale_modifier))

    def gaussian_batch_at_times(self, times: Tensor | Sequence[float], scale_modifier: float = 1.0,
                                deformation: Optional[Callable[..., DeformationOutput]] = None) -> GaussianBatch:
        """The same as :meth:`gaussians_at_times`, kept batched ([B, N, ...] tensors): what the
        training step renders (the gsplat backend takes the batch without stacking it again).
        ``deformation``: called in place of :attr:`deformation` with the same arguments (the
        training step's :class:`stag4d.gaussians.graphed.GraphedDeformation`)."""
        times = torch.as_tensor(times, dtype=torch.float32, device=self.device).reshape(-1)
        deform = self.deformation if deformation is None else deformation
        out = deform(self.means, self.log_scales, self.quats, self.opacity_logits, times)
        opacity_logits = out.opacity_logits if out.opacity_logits is not None else self.opacity_logits
        return GaussianBatch(means=out.means, log_scales=self._modified(out.log_scales, scale_modifier),
                             quats=torch.nn.functional.normalize(out.quats, dim=-1), opacity_logits=opacity_logits,
                             sh=self.sh)

    @staticmethod
    def _modified(log_scales: Tensor, scale_modifier: float) -> Tensor:
        return log_scales if scale_modifier == 1.0 else log_scales + math.log(scale_modifier)

    # ---- files ------------------------------------------------------------------------------
    def canonical_arrays(self) -> GaussianArrays:
        """Canonical raw parameters as numpy arrays."""
        return _arrays(self.means, self.sh_dc, self.sh_rest, self.opacity_logits, self.log_scales, self.quats)

    def save(self, folder: str) -> None:
        """Write ``folder/model.ply`` (canonical, raw 3DGS PLY) and ``folder/deformation.pt``."""
        write_model(folder, *self.saved_state())

    def saved_state(self) -> tuple[GaussianArrays, dict]:
        """What :meth:`save` writes, as host copies that later training steps leave alone (so
        :func:`write_model` may run on another thread): the canonical arrays, deformation.pt's content."""
        return self.canonical_arrays(), {"format": DEFORMATION_FORMAT, "config": self.deformation.cfg.to_dict(),
                                         "state_dict": host_copy(self.deformation.state_dict())}

    @classmethod
    def load(cls, folder: str, device: torch.device | str = "cpu") -> "GaussianModel4D":
        """Model saved by :meth:`save`; the SH degree comes from the PLY's f_rest count."""
        deformation_path = os.path.join(folder, DEFORMATION_FILE)
        if not os.path.isfile(deformation_path):
            raise DataError(f"{deformation_path} not found; give a folder written by the trainer (model.ply + deformation.pt)")
        arrays = read_gaussian_ply(os.path.join(folder, MODEL_PLY))
        try:
            saved = torch.load(deformation_path, map_location="cpu", weights_only=True)
            cfg = DeformationConfig.from_dict(saved["config"])
            state = saved["state_dict"]
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"{deformation_path}: not a deformation file of this project ({type(err).__name__}); re-save the model") from err
        model = cls(arrays.sh_degree, cfg).to(device)
        try:
            model.deformation.load_state_dict(state)
        except RuntimeError as err:
            raise DataError(f"{deformation_path}: weights do not match its config ({str(err).splitlines()[0]})") from err
        model.set_gaussians(*(torch.from_numpy(a) for a in (arrays.means, arrays.sh_dc, arrays.sh_rest,
                                                             arrays.log_scales, arrays.quats, arrays.opacity_logits)))
        bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise DataError(f"{folder} holds non-finite values ({', '.join(bad[:3])}): the run that saved it "
                            "diverged; use an earlier step")
        return model

    @torch.no_grad()
    def export_frame_ply(self, path: str, time: float | None) -> None:
        """Write the Gaussians at ``time`` (deformed; canonical for None) as a standard 3DGS PLY."""
        write_gaussian_ply(path, self.frame_arrays(time))

    @torch.no_grad()
    def frame_arrays(self, time: float | None) -> GaussianArrays:
        """The Gaussians at ``time`` (deformed; canonical for None) as host arrays of their own."""
        g = self.gaussians_at(time)
        return _arrays(g.means, g.sh[:, :1], g.sh[:, 1:], g.opacity_logits, g.log_scales, g.quats)


def write_model(folder: str, arrays: GaussianArrays, deformation: dict) -> None:
    """``folder/model.ply`` and ``folder/deformation.pt`` from :meth:`GaussianModel4D.saved_state`."""
    os.makedirs(folder, exist_ok=True)
    write_gaussian_ply(os.path.join(folder, MODEL_PLY), arrays)
    torch_save(deformation, os.path.join(folder, DEFORMATION_FILE))


def _arrays(means: Tensor, sh_dc: Tensor, sh_rest: Tensor, opacity_logits: Tensor, log_scales: Tensor,
            quats: Tensor) -> GaussianArrays:
    def np32(t: Tensor) -> np.ndarray:  # a copy even on the CPU: the caller may keep it while training goes on
        return t.detach().to("cpu", torch.float32, copy=True).numpy()

    return GaussianArrays(means=np32(means), sh_dc=np32(sh_dc), sh_rest=np32(sh_rest),
                          opacity_logits=np32(opacity_logits), log_scales=np32(log_scales), quats=np32(quats))
