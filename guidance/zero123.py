"""Zero123 score-distillation guidance (SPEC section 5).

The model (``ashawkey/zero123-xl-diffusers`` by default, or a local folder in the same diffusers
layout) is loaded component by component::

    <folder>/model_index.json
    <folder>/vae/                     AutoencoderKL
    <folder>/image_encoder/           CLIPVisionModelWithProjection (ViT-L/14, projection 768)
    <folder>/unet/                    UNet2DConditionModel, 8 input channels (noisy + condition latent)
    <folder>/scheduler/               scheduler_config.json -> DDIMScheduler (1000 train timesteps)
    <folder>/feature_extractor/       CLIPImageProcessor (we apply its resize/crop/mean/std in torch)
    <folder>/clip_camera_projection/  config.json {"_class_name": "CLIPCameraProjection",
                                      "embedding_dim": 768, "additional_embeddings": 4} +
                                      diffusion_pytorch_model.safetensors {proj.weight, proj.bias}

The released code resolves the projection's class through a top-level module name; we do not need
that: :class:`CLIPCameraProjection` below reads (and writes) the same config and weights.

Conventions (as the released code):
* conditioning images (reference frame and anchors) are embedded ONCE by :meth:`prepare`: image
  at 256x256, CLIP image embedding, and the VAE latent sample divided by nothing, i.e. the raw
  posterior sample (the released code multiplies by the scaling factor when encoding and divides
  it out again for the condition);
* renders are encoded as ``sample * scaling_factor`` (the diffusion model's latent space);
* camera code ``[deg2rad(d_elev), sin(deg2rad(d_azim)), cos(deg2rad(d_azim)), d_radius]``
  concatenated to the CLIP embedding, then the projection, gives the UNet's one-token context;
* classifier-free guidance: the unconditional branch has zeros for the projected embedding and
  for the condition latent; both branches of all samples go through ONE UNet call.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import diffusers
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from PIL import Image
from tqdm import tqdm
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from stag4d.compiled_regions import compile_regions
from stag4d.cuda_graphs import stream_mismatch_warning_off
from stag4d.errors import ModelUnavailable
from stag4d.files import write_text

from . import COMPILE_SCOPES, DEFAULT_ZERO123_MODEL, VAE_ATTENTION, GuidanceConfig
from .schedule import timestep_window

IMAGE_SIZE = 256  # Zero123 works on 256x256 images (32x32 latents)

COMPONENT_FOLDERS = ("vae", "image_encoder", "unet", "scheduler", "feature_extractor", "clip_camera_projection")

MODEL_INDEX = {
    "_class_name": "Zero123Pipeline",
    "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


class CLIPCameraProjection(ModelMixin, ConfigMixin):
    """One Linear from [CLIP image embedding, camera code] (D + 4) to the UNet context (D).

    Same class name, config keys and weight names as the ``clip_camera_projection`` folder of the
    released model, so ``from_pretrained``/``save_pretrained`` read and write that layout.
    """

    @register_to_config
    def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4):
        super().__init__()
        self.proj = torch.nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """[B, D + 4] -> [B, D]."""
        return self.proj(embedding)


@dataclass
class Zero123Components:
    """The frozen parts of a Zero123 model, as loaded (or built)."""

    vae: AutoencoderKL
    image_encoder: CLIPVisionModelWithProjection
    unet: UNet2DConditionModel
    scheduler: DDIMScheduler
    feature_extractor: CLIPImageProcessor
    projection: CLIPCameraProjection

    def save_pretrained(self, folder: str, variant: Optional[str] = None) -> None:
        """Write the released folder layout (model_index.json + one subfolder per component)."""
        os.makedirs(folder, exist_ok=True)
        self.vae.save_pretrained(os.path.join(folder, "vae"), variant=variant)
        self.unet.save_pretrained(os.path.join(folder, "unet"), variant=variant)
        self.projection.save_pretrained(os.path.join(folder, "clip_camera_projection"), variant=variant)
        self.image_encoder.save_pretrained(os.path.join(folder, "image_encoder"), variant=variant)
        self.scheduler.save_pretrained(os.path.join(folder, "scheduler"))
        self.feature_extractor.save_pretrained(os.path.join(folder, "feature_extractor"))
        index = {"_diffusers_version": diffusers.__version__, **MODEL_INDEX}
        write_text(os.path.join(folder, "model_index.json"), json.dumps(index, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# Loading


def unavailable(name: str, reason: str) -> ModelUnavailable:
    """One-line error naming the model id/path, why, and the fix."""
    reason = " ".join(str(reason).split())[:300]
    return ModelUnavailable(
        f"Zero123 model '{name}' cannot be loaded ({reason}): download {DEFAULT_ZERO123_MODEL} on a machine "
        f"with internet (huggingface-cli download {DEFAULT_ZERO123_MODEL} --local-dir zero123-xl-diffusers), "
        "copy the folder here and set zero123_model=/path/to/zero123-xl-diffusers, "
        "or use configs/anchored.yaml, which needs no diffusion model"
    )


def _looks_local(name: str) -> bool:
    """A path rather than a hub id ("owner/name")."""
    return (
        os.path.exists(name)
        or os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") != 1
    )


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")


def local_variant(folder: str, want_fp16: bool) -> Optional[str]:
    """Variant to load from a component folder: "fp16" when wanted and present, or when it is the only one."""
    weights = [f for f in os.listdir(folder) if f.endswith(WEIGHT_SUFFIXES) and "config" not in f]
    fp16 = [f for f in weights if ".fp16." in f or ".fp16-" in f]
    if fp16 and (want_fp16 or len(fp16) == len(weights)):
        return "fp16"
    return None


def _load_part(name: str, load, source: str, subfolder: str, variant: Optional[str], local: bool):
    """``load(source, subfolder=..., variant=...)``; on the hub, retry without the fp16 variant."""
    where = subfolder if local else f"hub download of {subfolder}/ failed, offline or not cached"
    try:
        return load(source, subfolder=subfolder, variant=variant)
    except (OSError, ValueError) as err:
        if variant is not None and not local:
            try:
                return load(source, subfolder=subfolder, variant=None)
            except (OSError, ValueError) as err2:
                raise unavailable(name, f"{where}: {err2}") from err2
        raise unavailable(name, f"{where}: {err}") from err


def load_zero123_components(name: str, dtype: torch.dtype = torch.float32,
                            seconds: Optional[dict[str, float]] = None) -> Zero123Components:
    """Load the six components from a local folder or a hub id; fp16 variant files when ``dtype`` is fp16.

    ``seconds``, when given, receives the wall seconds of each weighted component's read (and of
    the diffusers/transformers model modules each one imports on first use).

    Raises:
        errors.ModelUnavailable: folder or component missing, or the hub cannot be reached.
    """
    source = os.path.expanduser(name)
    local = _looks_local(name)
    if local:
        if not os.path.isdir(source):
            raise unavailable(name, f"folder {source} not found")
        missing = [sub for sub in COMPONENT_FOLDERS if not os.path.isdir(os.path.join(source, sub))]
        if missing:
            raise unavailable(name, f"{source} lacks {', '.join(s + '/' for s in missing)}")

    want_fp16 = dtype == torch.float16

    def variant_of(sub: str) -> Optional[str]:
        if local:
            return local_variant(os.path.join(source, sub), want_fp16)
        return "fp16" if want_fp16 else None

    def diffusers_loader(cls):
        return lambda src, subfolder, variant: cls.from_pretrained(src, subfolder=subfolder, variant=variant, torch_dtype=dtype)

    def clip_loader(src, subfolder, variant):
        # dtype is applied after loading: the keyword changed name across transformers versions.
        kwargs = {"variant": variant} if variant else {}
        return CLIPVisionModelWithProjection.from_pretrained(src, subfolder=subfolder, **kwargs).to(dtype)

    weighted = {  # component: (loader, subfolder)
        "vae": (diffusers_loader(AutoencoderKL), "vae"),
        "unet": (diffusers_loader(UNet2DConditionModel), "unet"),
        "projection": (diffusers_loader(CLIPCameraProjection), "clip_camera_projection"),
        "image_encoder": (clip_loader, "image_encoder"),
    }
    parts = {}
    for part, (loader, subfolder) in weighted.items():
        begin = time.perf_counter()
        parts[part] = _load_part(name, loader, source, subfolder, variant_of(subfolder), local)
        if seconds is not None:
            seconds[part] = time.perf_counter() - begin
    parts.update({
        "scheduler": _load_part(
            name, lambda src, subfolder, variant: DDIMScheduler.from_pretrained(src, subfolder=subfolder),
            source, "scheduler", None, local,
        ),
        "feature_extractor": _load_part(
            name, lambda src, subfolder, variant: CLIPImageProcessor.from_pretrained(src, subfolder=subfolder),
            source, "feature_extractor", None, local,
        ),
    })
    components = Zero123Components(**parts)
    check_components(name, components)
    return components


def check_components(name: str, parts: Zero123Components) -> None:
    """The shapes that must agree for Zero123 (8-channel UNet, matching embedding sizes)."""
    latent_channels = parts.vae.config.latent_channels
    if parts.unet.config.in_channels != 2 * latent_channels:
        raise unavailable(
            name, f"not a Zero123 model: the UNet takes {parts.unet.config.in_channels} channels, "
            f"expected {2 * latent_channels} (noisy + condition latent)"
        )
    dims = {
        "unet cross_attention_dim": parts.unet.config.cross_attention_dim,
        "projection embedding_dim": parts.projection.config.embedding_dim,
        "image_encoder projection_dim": parts.image_encoder.config.projection_dim,
    }
    if len(set(dims.values())) != 1:
        raise unavailable(name, f"embedding sizes disagree: {dims}")
    if parts.projection.config.additional_embeddings != 4:
        raise unavailable(name, "clip_camera_projection must take 4 camera numbers")


# ----------------------------------------------------------------------------------------------
# Image preprocessing


def resize_square(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 3, size, size], bilinear (align_corners=False) as the released code."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, (size, size), mode="bilinear", align_corners=False)


class ClipPreprocess:
    """CLIPImageProcessor's resize (bicubic), centre crop and normalization, in torch on the device."""

    def __init__(self, processor: CLIPImageProcessor):
        size = processor.size if processor.do_resize else None
        if size is None:
            self.resize = None
        elif "shortest_edge" in size:
            self.resize = int(size["shortest_edge"])
        else:
            self.resize = (int(size["height"]), int(size["width"]))
        crop = processor.crop_size if processor.do_center_crop else None
        self.crop = (int(crop["height"]), int(crop["width"])) if crop else None
        self.mean = torch.tensor(processor.image_mean if processor.do_normalize else [0.0, 0.0, 0.0])
        self.std = torch.tensor(processor.image_std if processor.do_normalize else [1.0, 1.0, 1.0])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> normalized pixel values [N, 3, h, w] (float32)."""
        x = images.float()
        if self.resize is not None:
            if isinstance(self.resize, int):
                h, w = x.shape[-2:]
                scale = self.resize / min(h, w)
                target = (max(1, round(h * scale)), max(1, round(w * scale)))
            else:
                target = self.resize
            if tuple(x.shape[-2:]) != tuple(target):
                x = F.interpolate(x, target, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
        if self.crop is not None:
            h, w = x.shape[-2:]
            top, left = max(0, (h - self.crop[0]) // 2), max(0, (w - self.crop[1]) // 2)
            x = x[..., top : top + self.crop[0], left : left + self.crop[1]]
        mean = self.mean.to(x.device).view(1, 3, 1, 1)
        std = self.std.to(x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def camera_code(d_elevation: torch.Tensor, d_azimuth: torch.Tensor, d_radius: torch.Tensor) -> torch.Tensor:
    """[B] degrees, degrees, radius offset -> [B, 4] float32 Zero123 camera code."""
    elevation = torch.deg2rad(d_elevation.float())
    azimuth = torch.deg2rad(d_azimuth.float())
    return torch.stack([elevation, torch.sin(azimuth), torch.cos(azimuth), d_radius.float()], dim=-1)


class GraphedUNet:
    """The frozen UNet's forward (no grad) replayed from a CUDA graph, one graph per input shape.

    The zero123-xl UNet at 32x32 latents runs hundreds of small kernels whose launch cost exceeds
    their run time; a replay launches them all at once. Inputs are copied into the graph's static
    buffers and the output is cloned out (the next replay overwrites it). The captured kernels are
    those eager mode runs (after warm-up iterations on a side stream, as CUDA graphs require), so
    the results are the eager ones. A failed capture warns once and returns None (caller: eager).
    """

    def __init__(self, unet: Any, warmup: int = 3):
        self.unet = unet
        self.warmup = warmup
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], torch.Tensor]] = {}

    def _forward(self, sample: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timesteps, encoder_hidden_states=context).sample

    @torch.no_grad()
    def _capture(self, inputs: tuple[torch.Tensor, ...]):
        static = tuple(x.clone() for x in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._forward(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self._forward(*static)
        return graph, static, output

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> Optional[torch.Tensor]:
        """[N, 2C, h, w], [N], [N, 1, D] -> eps [N, C, h, w] (model dtype), or None if capture failed."""
        inputs = (sample, timesteps, context)
        key = tuple((tuple(x.shape), x.dtype, x.stride()) for x in inputs)
        entry = self.graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(inputs)
            except Exception as err:  # capture is an optimization: fall back to eager
                warnings.warn(f"guidance_cuda_graph: UNet capture failed ({type(err).__name__}: {err}); eager UNet")
                return None
            self.graphs[key] = entry
        graph, static, output = entry
        for buffer, value in zip(static, inputs):
            buffer.copy_(value)
        graph.replay()
        return output.clone()


def set_vae_attention(vae, kind: str) -> None:
    """The attention processor of every attention layer of ``vae`` (only the encoder's mid-block one
    runs in the SDS): ``sdpa``, diffusers' default (``AttnProcessor2_0``, scaled dot-product
    attention), or ``matmul``, diffusers' ``AttnProcessor`` (scores by one batched matmul, softmax
    in fp32 as the layer's ``upcast_softmax`` asks, then a second matmul). The VAE's attention has
    one head of 512 channels, too wide for the flash kernels, so SDPA's backward runs the
    memory-efficient kernel; at 32 x 32 tokens the matmuls are small."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if kind not in VAE_ATTENTION:
        raise ValueError(f"vae attention {kind!r}: use one of {', '.join(VAE_ATTENTION)}")
    vae.set_attn_processor(AttnProcessor() if kind == "matmul" else AttnProcessor2_0())


def unet_regions(unet) -> list:
    """The UNet's repeated blocks, what ``guidance_compile_scope=blocks`` compiles: its ResNet blocks
    and its attention blocks (``Transformer2DModel``: norm, projections and transformer layers)."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return [m for m in unet.modules() if isinstance(m, (ResnetBlock2D, Transformer2DModel))]


def encoder_regions(vae) -> list:
    """The VAE encoder's ResNet blocks and its mid-block attention (the decoder never runs in the SDS)."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    return [m for m in vae.encoder.modules() if isinstance(m, (ResnetBlock2D, Attention))]


class GraphedEncoder:
    """The VAE posterior moments, forward AND backward replayed from CUDA graphs, one pair per shape.

    The SDS gradient reaches the renders through the frozen VAE encoder, whose forward and backward
    at 256x256 are again hundreds of launch-bound kernels. ``torch.cuda.make_graphed_callables``
    captures both (after warm-up) into one autograd function: same kernels, same results as eager.
    Only calls that need a gradient are graphed (the capture records the backward); others run
    eagerly. A failed capture warns once and returns None (caller: eager from then on).
    """

    def __init__(self, moments: Any, warmup: int = 3):
        self.moments = moments
        self.warmup = warmup
        self.graphs: dict[tuple, Any] = {}

    def __call__(self, pixels: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """pixels [B, 3, H, W] (requires grad) -> (mean, std) [B, C, h, w], or None if capture failed."""
        if not (torch.is_grad_enabled() and pixels.requires_grad):
            return self.moments(pixels)
        key = (tuple(pixels.shape), pixels.dtype, pixels.stride())
        graphed = self.graphs.get(key)
        if graphed is None:
            sample = pixels.detach().clone().requires_grad_(True)
            try:
                with stream_mismatch_warning_off():
                    graphed = torch.cuda.make_graphed_callables(self.moments, (sample,), num_warmup_iters=self.warmup)
            except Exception as err:  # capture is an optimization: fall back to eager
                warnings.warn(f"guidance_cuda_graph: VAE encoder capture failed ({type(err).__name__}: {err}); "
                              "eager encoder")
                return None
            self.graphs[key] = graphed
        # The graph's outputs and input gradient live in static buffers that the next replay
        # overwrites; one SDS call consumes both (loss, then backward) before the next call.
        return graphed(pixels)


# ----------------------------------------------------------------------------------------------
# Guidance


@dataclass
class SDSNoise:
    """The random draws of one SDS call; pass one to :meth:`Zero123Guidance.sds_loss` to replay it.

    Attributes:
        latent_eps: [B, C, h, w] standard normal noise of the VAE posterior sample.
        timesteps: LongTensor [B], diffusion timesteps.
        noise: [B, C, h, w] standard normal noise added to the latents.
    """

    latent_eps: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor

    def select(self, index) -> "SDSNoise":
        """The draws of the samples ``index`` (int, slice or index tensor), batch dim kept."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return SDSNoise(self.latent_eps[index], self.timesteps[index], self.noise[index])


class Zero123Guidance:
    """Frozen Zero123 model: multi-view SDS conditioned on the reference frame or an anchor view."""

    def __init__(
        self,
        components: Zero123Components,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
        guidance_scale: float = 5.0,
        cfg: Optional[GuidanceConfig] = None,
    ):
        self.device = torch.device(device)
        self.dtype = dtype
        self.cfg = cfg if cfg is not None else GuidanceConfig()
        self.guidance_scale = float(guidance_scale)
        for module in (components.vae, components.image_encoder, components.unet, components.projection):
            if module.dtype != dtype:
                module.to(dtype=dtype)
            module.to(device=self.device)
            module.eval()
            module.requires_grad_(False)
        self.vae = components.vae
        self.image_encoder = components.image_encoder
        self.unet = components.unet
        self.projection = components.projection
        self.clip_preprocess = ClipPreprocess(components.feature_extractor)
        self.feature_extractor = components.feature_extractor
        self.num_train_timesteps = int(components.scheduler.config.num_train_timesteps)
        self.alphas_cumprod = components.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.latent_scale = float(self.vae.config.scaling_factor)
        self.latent_channels = int(self.vae.config.latent_channels)
        self.latent_size = IMAGE_SIZE // 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet_forward = self.unet  # replaced by a compiled version in optimize()
        self.vae_moments = self.posterior_moments  # likewise
        self.memory_format = torch.contiguous_format
        # set by optimize(compile=True, compile_scope="blocks"): the blocks compiled in place, by the
        # name of the call they serve (given back their eager calls when that call fails)
        self.compiled_regions: dict[str, list] = {}
        self.graphed_unet: Optional[GraphedUNet] = None  # set by optimize(cuda_graph=True)
        self.graphed_encoder: Optional[GraphedEncoder] = None  # set by optimize(cuda_graph_vae=True)
        # Set by prepare(): per frame, slot 0 = reference, slot 1 + k = anchor k.
        self.clip_embeds: Optional[torch.Tensor] = None  # [T, 1 + V, D]
        self.cond_latents: Optional[torch.Tensor] = None  # [T, 1 + V, C, h, w]
        self.load_seconds: dict[str, float] = {}  # per part of from_config (read, to device, speed options)

    @classmethod
    def from_config(cls, cfg: GuidanceConfig, device: torch.device | str) -> "Zero123Guidance":
        """Load the model named by ``cfg.zero123_model``; fp16 on CUDA unless ``cfg.fp16`` is False."""
        device = torch.device(device)
        fp16 = cfg.fp16 is not False and device.type == "cuda"
        dtype = torch.float16 if fp16 else torch.float32
        seconds: dict[str, float] = {}
        components = load_zero123_components(cfg.zero123_model, dtype, seconds)
        begin = time.perf_counter()
        guide = cls(components, device, dtype, cfg.guidance_scale, cfg)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds["to device"], begin = time.perf_counter() - begin, time.perf_counter()
        guide.optimize_from_config(cfg)
        seconds["speed options"] = time.perf_counter() - begin
        guide.load_seconds = seconds
        return guide

    def optimize_from_config(self, cfg: GuidanceConfig) -> None:
        """:meth:`optimize` with the speed settings of ``cfg`` (which also becomes this guidance's
        config: the timestep window is read from it)."""
        self.cfg = cfg
        self.optimize(channels_last=cfg.guidance_channels_last, compile=cfg.guidance_compile,
                      compile_mode=cfg.guidance_compile_mode, compile_scope=cfg.guidance_compile_scope,
                      cuda_graph=cfg.guidance_cuda_graph,
                      cuda_graph_vae=cfg.guidance_cuda_graph_vae, cudnn_benchmark=cfg.guidance_cudnn_benchmark,
                      vae_attention=cfg.guidance_vae_attention)

    def optimize(self, channels_last: bool = False, compile: bool = False, compile_mode: str = "default",
                 compile_scope: str = "model", cuda_graph: bool = False, cuda_graph_vae: bool = False,
                 cudnn_benchmark: bool = False, vae_attention: str = "sdpa") -> None:
        """Speed options, all CUDA only (inert on the CPU).

        ``channels_last``: that memory format for the UNet and the VAE. ``compile``: torch.compile
        (``compile_mode``) of the UNet and of the VAE encoder, forward and backward, each whole
        (``compile_scope="model"``) or their blocks (``"blocks"``: :func:`unet_regions`,
        :func:`encoder_regions`); the first call compiles (see ``GuidanceConfig.guidance_compile``),
        and a failing compiled call warns and runs eagerly. ``cuda_graph``: the UNet forward
        replayed from a CUDA graph (the kernels of eager mode, or of the compiled UNet when both are
        set). ``cuda_graph_vae``: the VAE encoder's forward and backward likewise.
        ``cudnn_benchmark``: cuDNN times its convolution algorithms once per shape (before a graph
        captures them) and keeps the fastest. ``vae_attention``: see :func:`set_vae_attention`.
        Every call sets every option, so a second call undoes what the first turned on (the memory
        format included)."""
        if compile_scope not in COMPILE_SCOPES:
            raise ValueError(f"compile scope {compile_scope!r}: use one of {', '.join(COMPILE_SCOPES)}")
        on_cuda = self.device.type == "cuda"
        for regions in self.compiled_regions.values():
            compile_regions(regions, compile=False)
        self.compiled_regions = {}
        set_vae_attention(self.vae, vae_attention if on_cuda else "sdpa")
        self.memory_format = torch.channels_last if channels_last and on_cuda else torch.contiguous_format
        self.unet.to(memory_format=self.memory_format)
        self.vae.to(memory_format=self.memory_format)
        self.unet_forward, self.vae_moments = self.unet, self.posterior_moments
        if on_cuda:
            torch.backends.cudnn.benchmark = cudnn_benchmark
        if compile and on_cuda:
            mode = None if compile_mode in ("", "default") else compile_mode
            if compile_scope == "model":
                self.unet_forward = torch.compile(self.unet, mode=mode)
                self.vae_moments = torch.compile(self.posterior_moments, mode=mode)
            else:
                # the calls stay the modules' own: their blocks are compiled in place
                self.compiled_regions = {"unet_forward": compile_regions(unet_regions(self.unet), mode=mode),
                                         "vae_moments": compile_regions(encoder_regions(self.vae), mode=mode)}
        self.graphed_unet = GraphedUNet(self.unet_forward) if cuda_graph and on_cuda else None
        self.graphed_encoder = GraphedEncoder(self.vae_moments) if cuda_graph_vae and on_cuda else None

    @property
    def num_frames(self) -> int:
        return 0 if self.clip_embeds is None else self.clip_embeds.shape[0]

    @property
    def num_anchors(self) -> int:
        return 0 if self.clip_embeds is None else self.clip_embeds.shape[1] - 1

    # -- conditioning ---------------------------------------------------------------------------

    @torch.no_grad()
    def embed_images(
        self, images: torch.Tensor, generator: Optional[torch.Generator] = None, chunk: int = 16
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning embeddings of images [N, 3, H, W] in [0, 1] (on white).

        Returns:
            clip: [N, D] CLIP image embeddings; latents: [N, C, h, w] raw VAE posterior samples
            (the released ``sample * scaling / scaling``); both in the model dtype on the device.
        """
        clips, latents = [], []
        starts = range(0, images.shape[0], chunk)
        # once per run, eagerly as with a whole-model compile: compiled VAE blocks would compile
        # again for these shapes
        eager = torch.compiler.set_stance("force_eager") if self.compiled_regions else contextlib.nullcontext()
        with eager:
            # a bar on a terminal only: in a log it is carriage-return noise
            for start in tqdm(starts, desc="zero123 embed", leave=False,
                              disable=len(starts) <= 4 or not sys.stderr.isatty()):
                x = resize_square(images[start : start + chunk].to(self.device, torch.float32))
                pixels = self._clip_pixels(x).to(self.dtype)
                clips.append(self.image_encoder(pixel_values=pixels).image_embeds)
                posterior = self.vae.encode((x * 2.0 - 1.0).to(self.dtype)).latent_dist
                latents.append(posterior.sample(generator))
        return torch.cat(clips), torch.cat(latents)

    def _clip_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP pixel values of images [N, 3, 256, 256] in [0, 1] (``clip_preprocess``): ours in
        torch on floats, or the released path: 8-bit PIL images (``to_pil_image`` truncates x * 255)
        through the model's CLIPImageProcessor."""
        if self.cfg.clip_preprocess == "torch":
            return self.clip_preprocess(images)
        pil = [Image.fromarray(image.mul(255).byte().permute(1, 2, 0).cpu().numpy()) for image in images]
        pixels = self.feature_extractor(images=pil, return_tensors="pt").pixel_values
        return pixels.to(images.device)

    def prepare(
        self,
        ref_rgb: torch.Tensor,
        anchor_rgb: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        """Embed the reference frames [T, 3, H, W] and the anchors [T, V, 3, h, w] (or None) once."""
        if ref_rgb.ndim != 4 or ref_rgb.shape[1] != 3:
            raise ValueError(f"ref_rgb must be [T, 3, H, W], got {tuple(ref_rgb.shape)}")
        frames = ref_rgb.shape[0]
        clip, latent = self.embed_images(ref_rgb, generator)
        clip, latent = clip[:, None], latent[:, None]
        if anchor_rgb is not None:
            if anchor_rgb.ndim != 5 or anchor_rgb.shape[0] != frames or anchor_rgb.shape[2] != 3:
                raise ValueError(f"anchor_rgb must be [{frames}, V, 3, h, w], got {tuple(anchor_rgb.shape)}")
            views = anchor_rgb.shape[1]
            a_clip, a_latent = self.embed_images(anchor_rgb.flatten(0, 1), generator)
            clip = torch.cat([clip, a_clip.view(frames, views, -1)], dim=1)
            latent = torch.cat([latent, a_latent.view(frames, views, *a_latent.shape[1:])], dim=1)
        self.clip_embeds = clip.contiguous()
        self.cond_latents = latent.contiguous()

    def warm_up(self, batch: int) -> dict[str, float]:
        """One SDS pass (VAE encoder forward and backward, guided UNet) on zeros of a training step's
        shapes, ``batch`` renders: torch.compile, the CUDA-graph captures and cuDNN's algorithm
        timing happen now instead of at the first step, e.g. while main.py waits for gen_mv
        (``data.wait_for``). It draws no random numbers and needs no :meth:`prepare`; a step after
        it computes what it computes without it. Returns the seconds of each part (device synchronized)."""
        seconds: dict[str, float] = {}
        start = time.perf_counter()

        def done(part: str) -> None:
            nonlocal start
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds[part], start = time.perf_counter() - start, time.perf_counter()

        shape = (batch, self.latent_channels, self.latent_size, self.latent_size)
        pixels = torch.zeros(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=self.device, requires_grad=True)
        latents = self.encode_images(pixels, torch.zeros(shape, device=self.device))
        latents.float().sum().backward()
        done("VAE encoder")
        noisy = torch.zeros(shape, device=self.device, dtype=self.dtype)
        timesteps = torch.full((batch,), self.num_train_timesteps // 2, device=self.device, dtype=torch.long)
        context = torch.zeros(batch, self.unet.config.cross_attention_dim, device=self.device, dtype=self.dtype)
        self.predict_noise(noisy, timesteps, context, torch.zeros_like(noisy))
        done("UNet")
        return seconds

    # -- SDS ------------------------------------------------------------------------------------

    def draw_noise(self, batch: int, step: int, generator: Optional[torch.Generator] = None) -> SDSNoise:
        """Random draws of one SDS call: t uniform in the window of ``step`` (closed range), noises."""
        min_step, max_step = timestep_window(step, self.cfg, self.num_train_timesteps)
        shape = (batch, self.latent_channels, self.latent_size, self.latent_size)
        latent_eps = torch.randn(shape, generator=generator, device=self.device)
        timesteps = torch.randint(min_step, max_step + 1, (batch,), generator=generator, device=self.device)
        noise = torch.randn(shape, generator=generator, device=self.device)
        return SDSNoise(latent_eps, timesteps, noise)

    def _eager_or_compiled(self, name: str, *args, **kwargs):
        """Call ``self.<name>`` (``unet_forward`` or ``vae_moments``); when it is a compiled version,
        or its blocks are compiled (``compiled_regions``), and it fails (no Triton, no C compiler, an
        unsupported op), warn once and run the eager one from then on: ``guidance_compile`` is an
        optimization and must not end a run."""
        eager = {"unet_forward": self.unet, "vae_moments": self.posterior_moments}[name]
        function = getattr(self, name)
        # ==, not is: each self.posterior_moments is a new bound method object
        if function == eager and name not in self.compiled_regions:
            return eager(*args, **kwargs)
        try:
            return function(*args, **kwargs)
        except Exception as err:
            # dynamo's first line is often only "backend='inductor' raised:"; the cause follows
            summary = " ".join(line.strip() for line in str(err).splitlines() if line.strip())[:200]
            warnings.warn(f"guidance_compile: the compiled {name} failed ({type(err).__name__}: {summary}); "
                          "eager from now on (guidance_compile=false skips the attempt)")
            setattr(self, name, eager)
            compile_regions(self.compiled_regions.pop(name, []), compile=False)
            return eager(*args, **kwargs)

    def posterior_moments(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior of pixels [B, 3, H, W] in [-1, 1]: (mean, std), each [B, C, h, w]."""
        posterior = self.vae.encode(pixels).latent_dist
        return posterior.mean, posterior.std

    def encode_images(self, images: torch.Tensor, latent_eps: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Renders [B, 3, 256, 256] in [0, 1] -> latents [B, C, h, w] * scaling factor (differentiable)."""
        pixels = (images * 2.0 - 1.0).to(self.dtype).contiguous(memory_format=self.memory_format)
        moments = None
        if self.graphed_encoder is not None:
            moments = self.graphed_encoder(pixels)
            if moments is None:  # capture failed (warned once): eager from now on
                self.graphed_encoder = None
        mean, std = moments if moments is not None else self._eager_or_compiled("vae_moments", pixels)
        if latent_eps is None:
            latent_eps = torch.randn_like(mean)
        return (mean + std * latent_eps.to(mean.dtype)) * self.latent_scale

    @torch.no_grad()
    def predict_noise(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, cond_latents: torch.Tensor
    ) -> torch.Tensor:
        """Guided noise prediction [B, C, h, w] (float32); both CFG branches in one UNet call.

        Args:
            noisy: [B, C, h, w] noisy latents; timesteps: [B];
            context: [B, D] projected (CLIP + camera) embeddings; cond_latents: [B, C, h, w].
        """
        latent_in = torch.cat(
            [torch.cat([noisy, cond_latents], dim=1), torch.cat([noisy, torch.zeros_like(cond_latents)], dim=1)]
        ).contiguous(memory_format=self.memory_format)
        context_in = torch.cat([context, torch.zeros_like(context)])[:, None, :]
        timesteps_in = torch.cat([timesteps, timesteps])
        if self.graphed_unet is not None:
            eps = self.graphed_unet(latent_in, timesteps_in, context_in)
            if eps is None:  # capture failed (warned once): eager from now on
                self.graphed_unet = None
        if self.graphed_unet is None:
            eps = self._eager_or_compiled("unet_forward", latent_in, timesteps_in,
                                          encoder_hidden_states=context_in).sample
        eps_cond, eps_uncond = eps.float().chunk(2)
        return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)

    def sds_loss(
        self,
        images: torch.Tensor,
        frame_idx: torch.Tensor,
        cond_view: torch.Tensor,
        d_elevation: torch.Tensor,
        d_azimuth: torch.Tensor,
        d_radius: torch.Tensor,
        step: int,
        noise: Optional[SDSNoise] = None,
    ) -> torch.Tensor:
        """Sum over the batch of the per-sample SDS losses (gradient flows to ``images`` only).

        Args:
            images: [B, 3, H, W] renders in [0, 1] (resized to 256x256 here).
            frame_idx: LongTensor [B]; cond_view: LongTensor [B] (-1 = reference, k = anchor k).
            d_elevation, d_azimuth: [B] degrees relative to the conditioning view; d_radius: [B].
            step: global step (timestep window).
            noise: the random draws to use (default: drawn now, see :meth:`draw_noise`).

        Returns:
            scalar float32 ``0.5 * sum((latents - stopgrad(latents - grad))^2)`` with
            ``grad = (1 - alphas_cumprod[t]) * (eps_pred - eps)``.
        """
        if self.clip_embeds is None or self.cond_latents is None:
            raise RuntimeError("Zero123Guidance.prepare() must be called before sds_loss()")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        batch = images.shape[0]
        if cond_view.device.type == "cpu" and (cond_view.min() < -1 or cond_view.max() >= 1 + self.num_anchors):
            raise ValueError(f"cond_view {cond_view.tolist()} out of range: {self.num_anchors} anchors prepared")
        if noise is None:
            noise = self.draw_noise(batch, step)

        latents = self.encode_images(resize_square(images), noise.latent_eps)  # [B, C, h, w], with grad
        with torch.no_grad():
            frame = frame_idx.to(self.device, torch.long)
            slot = cond_view.to(self.device, torch.long) + 1
            camera = camera_code(d_elevation, d_azimuth, d_radius).to(self.device)
            clip = self.clip_embeds[frame, slot]  # [B, D]
            context = self.projection(torch.cat([clip, camera.to(self.dtype)], dim=-1))
            alpha_bar = self.alphas_cumprod[noise.timesteps].view(-1, 1, 1, 1)
            eps = noise.noise.float()
            noisy = (alpha_bar.sqrt() * latents.float() + (1.0 - alpha_bar).sqrt() * eps).to(self.dtype)
            eps_pred = self.predict_noise(noisy, noise.timesteps, context, self.cond_latents[frame, slot])
            grad = torch.nan_to_num((1.0 - alpha_bar) * (eps_pred - eps))
        target = (latents.float() - grad).detach()
        return 0.5 * F.mse_loss(latents.float(), target, reduction="sum")
