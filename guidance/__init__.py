"""Score-distillation guidance (SPEC section 5).

This package is light: importing it does not import diffusers or transformers. The heavy model
code lives in :mod:`guidance.zero123` and is imported only by :func:`load_guidance`.

Interface used by the trainer::

    guide = load_guidance(cfg, device)           # raises errors.ModelUnavailable
    guide.prepare(ref_rgb, anchor_rgb)           # once, before training
    loss = guide.sds_loss(images, frame_idx, cond_view, d_elevation, d_azimuth, d_radius, step)

Config keys read (all optional; defaults in brackets): ``zero123_model``
[``ashawkey/zero123-xl-diffusers``; a hub id or a local folder in the diffusers layout],
``guidance_scale`` [5], ``fp16`` [True on CUDA, always False on CPU], the timestep window keys
of :mod:`guidance.schedule` (``min_step_start``, ``min_step_end``, ``max_step_start``,
``max_step_end``, ``anneal_steps``), and two speed options, ``guidance_compile`` [False;
torch.compile of the UNet and the VAE encoder, ~30% faster SDS after a ~1 min first call] and
``guidance_channels_last`` [False; no gain measured on H100].
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_ZERO123_MODEL = "ashawkey/zero123-xl-diffusers"


@runtime_checkable
class Guidance(Protocol):
    """A frozen diffusion model that turns renders into an SDS loss."""

    def prepare(self, ref_rgb: "torch.Tensor", anchor_rgb: Optional["torch.Tensor"] = None) -> None:
        """Embed the conditioning images once.

        Args:
            ref_rgb: [T, 3, H, W] reference frames in [0, 1], composited on white.
            anchor_rgb: [T, V, 3, h, w] anchor views in [0, 1] on white, or None (reference only).
        """
        ...

    def sds_loss(
        self,
        images: "torch.Tensor",
        frame_idx: "torch.Tensor",
        cond_view: "torch.Tensor",
        d_elevation: "torch.Tensor",
        d_azimuth: "torch.Tensor",
        d_radius: "torch.Tensor",
        step: int,
    ) -> "torch.Tensor":
        """SDS loss summed over the batch (one batched UNet call).

        Args:
            images: [B, 3, H, W] renders in [0, 1] (gradient flows back to them only).
            frame_idx: LongTensor [B], frame of each render.
            cond_view: LongTensor [B], -1 = the reference frame, k >= 0 = anchor k.
            d_elevation, d_azimuth: [B] degrees, pose of the render relative to the
                conditioning view.
            d_radius: [B] radius offset.
            step: global training step (drives the timestep window).

        Returns:
            scalar loss.
        """
        ...


def cfg_get(cfg: Any, key: str, default: Any) -> Any:
    """``cfg.key`` for dicts, OmegaConf nodes and plain objects; ``default`` when absent or None."""
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        value = cfg.get(key, default)
    else:
        try:
            value = cfg.get(key, default)  # OmegaConf DictConfig, Mapping
        except (AttributeError, TypeError):
            value = getattr(cfg, key, default)
    return default if value is None else value


def load_guidance(cfg: Any, device: "torch.device | str") -> Guidance:
    """Load the Zero123 guidance model named by ``cfg.zero123_model`` (hub id or local folder).

    Raises:
        errors.ModelUnavailable: the model cannot be found or downloaded.
    """
    from errors import ModelUnavailable, quiet_hub_warnings

    with quiet_hub_warnings():
        try:
            from .zero123 import Zero123Guidance
        except ImportError as err:  # diffusers / transformers missing or broken
            raise ModelUnavailable(
                f"Zero123 guidance needs diffusers and transformers ({err}): pip install -r requirements.txt, "
                "or use configs/anchored.yaml, which needs no diffusion model"
            ) from err
        return Zero123Guidance.from_config(cfg, device)


__all__ = ["DEFAULT_ZERO123_MODEL", "Guidance", "cfg_get", "load_guidance"]
