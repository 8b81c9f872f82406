"""Score-distillation guidance (SPEC section 5).

This package is light: importing it does not import diffusers or transformers. The heavy model
code lives in :mod:`guidance.zero123` and is imported only by :func:`load_guidance`.

Interface used by the trainer::

    guide = load_guidance(cfg, device)           # raises errors.ModelUnavailable
    guide.prepare(ref_rgb, anchor_rgb)           # once, before training
    guide.warm_up(batch)                         # optional: on CUDA, compile / capture before the first step
    loss = guide.sds_loss(images, frame_idx, cond_view, d_elevation, d_azimuth, d_radius, step)

Settings: :class:`GuidanceConfig` (the model, CFG scale, precision, the timestep window of
:mod:`guidance.schedule` and the speed options).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Protocol, runtime_checkable

from stag4d.errors import ModelUnavailable, quiet_hub_warnings
from stag4d.settings import ConfigError, setting

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_ZERO123_MODEL = "ashawkey/zero123-xl-diffusers"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_SCOPES = ("model", "blocks")
TIMESTEP_ROUNDINGS = ("round", "truncate")
CLIP_PREPROCESSING = ("torch", "processor")
VAE_ATTENTION = ("sdpa", "matmul")


@dataclass
class GuidanceConfig:
    """The Zero123 guidance of the SDS loss (SPEC 5; defaults = the released run)."""

    zero123_model: str = setting(DEFAULT_ZERO123_MODEL, "hub id or a local diffusers folder of Zero123")
    guidance_scale: float = setting(5.0, "classifier-free guidance scale", ge=0)
    fp16: Optional[bool] = setting(None, "half precision; null = fp16 on CUDA (always fp32 on the CPU)")
    # Speed options (CUDA only; the same results within fp16 rounding: tests/test_train_speed.py).
    # Measured on an H200 (benchmarks/bench_train_step.py): 41.1 -> 32.1 ms per step (compile, channels-last,
    # cuDNN benchmark); then 33.0 / 35.5 -> 31.4 / 29.5 ms with the matmul VAE attention and the compiled
    # regularizers (alternated); 26.4 / 25.8 -> 25.3 / 24.0 ms with guidance_compile_scope=blocks (alternated).
    guidance_compile: bool = setting(True, "torch.compile the UNet and the VAE encoder (at start-up: ~80 s the "
                                     "first time on a machine, ~13 s from inductor's cache after that)")
    guidance_channels_last: bool = setting(True, "channels-last memory format of the UNet and the VAE (alone, "
                                           "without guidance_compile, it is slower)")
    guidance_cudnn_benchmark: bool = setting(True, "let cuDNN time its convolution algorithms on the first call of "
                                             "each shape and keep the fastest (a process-wide switch)")
    guidance_compile_mode: str = setting("default", "torch.compile mode when guidance_compile", choices=COMPILE_MODES)
    guidance_compile_scope: str = setting("blocks", "what guidance_compile compiles: blocks (the UNet's and the VAE "
                                          "encoder's ResNet and attention blocks, in place; each block shape is "
                                          "traced once, the code between the blocks stays eager) or model (each "
                                          "whole). H200: blocks 1 to 2 ms a step faster, main.py's default run "
                                          "241.6 against 247.6 s", choices=COMPILE_SCOPES)
    guidance_vae_attention: str = setting("matmul", "the VAE's single-head attention on CUDA (head size 512: no "
                                          "flash kernel; SDPA's memory-efficient backward took 1.5 ms a step on an "
                                          "H200): matmul (diffusers' AttnProcessor: two matmuls, softmax in fp32; "
                                          "3 to 5 ms a step faster, alternated runs) or sdpa (AttnProcessor2_0, "
                                          "always used on the CPU)", choices=VAE_ATTENTION)
    guidance_cuda_graph: bool = setting(True, "replay the UNet forward from a CUDA graph (same kernels, same results)")
    guidance_cuda_graph_vae: bool = setting(True, "VAE encoder forward + backward from CUDA graphs (same results)")
    min_step_start: float = setting(0.5, "timestep window: lower end at step 0, fraction of 1000", ge=0, le=1)
    min_step_end: float = setting(0.02, "lower end from anneal_steps on", ge=0, le=1)
    max_step_start: float = setting(0.95, "upper end at step 0", ge=0, le=1)
    max_step_end: float = setting(0.5, "upper end from anneal_steps on", ge=0, le=1)
    anneal_steps: int = setting(3000, "steps over which both ends move linearly", ge=0)
    timestep_rounding: str = setting("round", "window ends as timesteps: round (ours: 0.725 -> 725) or truncate "
                                     "(released int(): 0.725 * 1000 = 724.99 -> 724)", choices=TIMESTEP_ROUNDINGS)
    clip_preprocess: str = setting("torch", "CLIP input of a condition image: torch (bicubic with antialias on "
                                   "floats, ours) or processor (8-bit PIL through CLIPImageProcessor, released)",
                                   choices=CLIP_PREPROCESSING)

    def check(self) -> None:
        if self.min_step_start > self.max_step_start or self.min_step_end > self.max_step_end:
            raise ConfigError(f"timestep window: min_step_start={self.min_step_start} / min_step_end="
                              f"{self.min_step_end} must not exceed max_step_start={self.max_step_start} / "
                              f"max_step_end={self.max_step_end}")


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


def load_guidance(cfg: GuidanceConfig, device: "torch.device | str") -> Guidance:
    """Load the Zero123 guidance model named by ``cfg.zero123_model`` (hub id or local folder).

    Raises:
        errors.ModelUnavailable: the model cannot be found or downloaded.
    """
    with quiet_hub_warnings():
        try:
            from .zero123 import Zero123Guidance
        except ImportError as err:  # diffusers / transformers missing or broken
            raise ModelUnavailable(
                f"Zero123 guidance needs diffusers and transformers ({err}): pip install -r requirements.txt, "
                "or use configs/anchored.yaml, which needs no diffusion model"
            ) from err
        return Zero123Guidance.from_config(cfg, device)


__all__ = ["DEFAULT_ZERO123_MODEL", "Guidance", "GuidanceConfig", "load_guidance"]
