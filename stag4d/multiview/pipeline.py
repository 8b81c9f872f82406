"""Zero123++ (v1.1) multi-view generation, written from the public pipeline's description.

One call turns a square input image into a 640x960 grid of six 320x320 views (2 columns x 3
rows; tile ``k`` at column ``k % 2``, row ``k // 2``, see :func:`cam_utils.tile_box`):

* The model folder is the diffusers layout of ``sudo-ai/zero123plus-v1.1``: ``model_index.json``
  (with ``ramping_coefficients``, one per text token), ``vae/`` (AutoencoderKL), ``unet/``
  (UNet2DConditionModel), ``text_encoder/`` (CLIPTextModel), ``tokenizer/`` (CLIPTokenizer),
  ``vision_encoder/`` (CLIPVisionModelWithProjection), ``feature_extractor_clip/`` and
  ``feature_extractor_vae/`` (CLIPImageProcessor configs), ``scheduler/``. Each component is
  loaded on its own with its diffusers / transformers class, from a hub id or a local folder.
* Input: RGBA composited on grey 127 (Zero123++'s ``to_rgb_image``; the model was trained on
  grey backgrounds, so not white), then resized by the two feature-extractor configs: the VAE
  view (``feature_extractor_vae``: mean 0.5, std 0.8, i.e. ``images' = images * 0.5 / 0.8`` of
  the usual [-1, 1] image) and the CLIP view (``feature_extractor_clip``). The configs are read
  and applied here with PIL (resize of the shortest edge, centre crop, rescale, normalize), the
  same steps as CLIPImageProcessor, so results do not depend on which backend transformers picks.
* Conditioning: the condition latent is a sample of the VAE posterior of the VAE view (no
  scaling factor, as in Zero123++); the prompt embedding is the text encoding of the empty
  prompt plus the CLIP image embedding times ``ramping_coefficients`` (one per token).
* Classifier-free guidance as Zero123++ does it: one batch ``[uncond, cond]``; the uncond branch
  has the plain empty-prompt embedding and, as its reference, the latent of an all-zero VAE
  view; ``pred = uncond + guidance * (cond - uncond)``.
* Every step: the reference pass of the UNet over the condition latent noised to the step's
  sigma, then the main pass whose self-attentions also see the reference pass's hidden states
  (:mod:`stag4d.multiview.attention`), with STAG4D's temporal anchor if one is given.
* EulerAncestralDiscreteScheduler with ``timestep_spacing="trailing"``. Latents live in the
  scaled space ``latents' = (latents - 0.22) * 0.75`` (of the VAE latents times its scaling
  factor); decoding undoes it, then undoes the image scaling: ``images = images' / 0.5 * 0.8``.
* All randomness (condition latents, reference noise, initial latents, ancestral noise) comes
  from one CPU ``torch.Generator`` seeded per frame, so one seed gives the same frame on any
  device (the released code seeded only part of it).
* Several frames can be generated in one batch (:meth:`Zero123PlusPipeline.generate`): every
  frame keeps its own generator and draws from it exactly what it draws alone, in the same order
  and shapes; the batch is laid out branch-major, ``[uncond of every frame, cond of every frame]``,
  so guidance is ``chunk(2)`` as for one frame. Only the UNet then computes with a larger batch,
  which may round differently (kernels are picked by shape): a batched frame equals the frame
  alone to float rounding (tested), bit for bit where the kernels do not depend on the batch.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from stag4d.compiled_regions import compile_regions
from stag4d.errors import ModelUnavailable

from .attention import READ, WRITE, install_reference_attention

DEFAULT_MODEL_ID = "sudo-ai/zero123plus-v1.1"
GRAY_BACKGROUND = 127  # Zero123++'s to_rgb_image pastes RGBA onto uint8 grey 127
OUTPUT_WIDTH, OUTPUT_HEIGHT = 640, 960
RANDOMNESS = ("seeded", "released")
OUTPUTS = ("uint8", "float")
NUM_VIEWS = 6
# Which scaled-dot-product attention kernel runs first where it can (benchmarks/bench_zero123pp.py
# --unet-options): auto = PyTorch's own choice (on an H200 with PyTorch 2.11: cuDNN's kernel for
# these fp16 shapes, bit for bit); the others put that kernel first, then flash, memory-efficient,
# math and cuDNN, so that shapes it cannot take (the VAE's one 512-wide head) still run.
ATTENTION_KERNELS = ("auto", "cudnn", "flash", "efficient", "math")

LATENT_SHIFT, LATENT_SCALE = 0.22, 0.75
IMAGE_SCALE = 0.5 / 0.8

_FIX = (
    "download the model folder on a machine with internet "
    f"(e.g. `huggingface-cli download {DEFAULT_MODEL_ID} --local-dir DIR`), copy DIR here and pass --model DIR"
)


def scale_latents(latents: torch.Tensor) -> torch.Tensor:
    return (latents - LATENT_SHIFT) * LATENT_SCALE


def unscale_latents(latents: torch.Tensor) -> torch.Tensor:
    return latents / LATENT_SCALE + LATENT_SHIFT


def scale_image(image: torch.Tensor) -> torch.Tensor:
    return image * IMAGE_SCALE


def unscale_image(image: torch.Tensor) -> torch.Tensor:
    return image / IMAGE_SCALE


def composite_on_gray(rgba: np.ndarray, gray: int = GRAY_BACKGROUND) -> np.ndarray:
    """uint8 RGB [H, W, 3] of a uint8 RGBA image [H, W, 4] pasted on a uniform grey."""
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"expected a uint8 RGBA image [H, W, 4], got {rgba.dtype} {tuple(rgba.shape)}")
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + float(gray) * (1.0 - alpha)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ImagePreprocess:
    """The steps of a CLIPImageProcessor config, applied with PIL.

    Attributes mirror ``preprocessor_config.json``: resize so that the shortest edge is
    ``shortest_edge`` (PIL filter ``resample``), centre-crop to ``crop``, multiply by
    ``rescale_factor``, normalize by ``mean`` / ``std``; each step only when its flag is set.
    """

    shortest_edge: int
    crop: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = 3
    rescale_factor: float = 1.0 / 255.0
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def from_config(cls, config: dict) -> "ImagePreprocess":
        size = config.get("size", 224)
        if isinstance(size, dict):
            size = size.get("shortest_edge", min(size.get("height", 224), size.get("width", 224)))
        crop = config.get("crop_size", size)
        crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (int(crop), int(crop))
        return cls(
            shortest_edge=int(size),
            crop=crop,
            mean=_triple(config.get("image_mean", 0.5)),
            std=_triple(config.get("image_std", 0.5)),
            resample=int(config.get("resample", 3)),
            rescale_factor=float(config.get("rescale_factor", 1.0 / 255.0)),
            do_resize=bool(config.get("do_resize", True)),
            do_center_crop=bool(config.get("do_center_crop", True)),
            do_rescale=bool(config.get("do_rescale", True)),
            do_normalize=bool(config.get("do_normalize", True)),
        )

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """Pixel values [1, 3, h, w] float32 of a uint8 RGB image [H, W, 3]."""

        image = Image.fromarray(rgb)
        if self.do_resize:
            width, height = image.size
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(self.shortest_edge * long / short)
            size = (self.shortest_edge, new_long) if width <= height else (new_long, self.shortest_edge)
            if size != image.size:
                image = image.resize(size, resample=self.resample)
        if self.do_center_crop:
            crop_h, crop_w = self.crop
            width, height = image.size
            left, top = (width - crop_w) // 2, (height - crop_h) // 2
            if (crop_w, crop_h) != (width, height):
                image = image.crop((left, top, left + crop_w, top + crop_h))
        pixels = np.asarray(image, dtype=np.float32)
        if self.do_rescale:
            pixels = pixels * self.rescale_factor
        if self.do_normalize:
            pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]


def _to(model, device: torch.device, dtype: torch.dtype):
    """``model`` on ``device`` in ``dtype``, in eval mode; casts only when needed (diffusers warns on any cast)."""
    model = model.to(device)
    if next(model.parameters()).dtype != dtype:
        model = model.to(dtype=dtype)
    return model.eval()


def _triple(value) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    return tuple(float(v) for v in value)


def attention_kernel(name: str = "auto") -> contextlib.AbstractContextManager:
    """A context in which ``F.scaled_dot_product_attention`` tries kernel ``name`` first
    (:data:`ATTENTION_KERNELS`). Every kernel computes the same attention; they differ in speed
    and in float rounding only."""
    if name not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel {name!r}: use one of {', '.join(ATTENTION_KERNELS)}")
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    first = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]
    rest = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH, SDPBackend.CUDNN_ATTENTION]
    return sdpa_kernel([first] + [b for b in rest if b != first], set_priority=True)


def compile_unet_blocks(unet, compile: bool = True) -> list:
    """torch.compile (``compile=True``) or back to eager (``False``) the UNet's ResNet blocks and
    feed-forward layers, in place; returns those modules.

    The attention layers stay eager: the reference attention and the temporal anchor pass Python
    state through them (a store per step, the step index), which would make dynamo recompile at
    every step. What compiles is the rest, where inductor fuses the group norms and SiLUs of the
    ResNet blocks and the GEGLU of the feed-forward layers, elementwise passes over activations of
    up to [16, 320, 120, 80] at a batch of 8 frames. Blocks of the same shapes share one compiled
    graph (:func:`stag4d.compiled_regions.compile_regions`)."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.resnet import ResnetBlock2D

    blocks = [m for m in unet.modules() if isinstance(m, (ResnetBlock2D, FeedForward))]
    return compile_regions(blocks, compile)


class Zero123PlusPipeline:
    """Zero123++ components on one device, plus reference attention in the UNet.

    Build it with :func:`load_pipeline`; call it on a uint8 RGB image composited on grey.
    """

    def __init__(
        self,
        *,
        vae,
        unet,
        text_encoder,
        tokenizer,
        vision_encoder,
        scheduler_config: dict,
        vae_preprocess: ImagePreprocess,
        clip_preprocess: ImagePreprocess,
        ramping_coefficients: Sequence[float],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.device, self.dtype = torch.device(device), dtype
        self.vae = _to(vae, self.device, dtype)
        self.unet = _to(unet, self.device, dtype)
        self.text_encoder = _to(text_encoder, self.device, dtype)
        self.vision_encoder = _to(vision_encoder, self.device, dtype)
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.vae_preprocess, self.clip_preprocess = vae_preprocess, clip_preprocess
        self.ramping_coefficients = torch.tensor(list(ramping_coefficients), dtype=torch.float32)
        self.processors = install_reference_attention(self.unet)
        # (shape of the VAE view, empty-prompt encoding, VAE posterior of an all-zero view): the
        # unconditional branch's inputs, the same for every frame, so computed once (_unconditional)
        self._unconditional_cache: tuple | None = None
        self.load_seconds: dict[str, float] = {}  # per component, set by load_pipeline

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def make_scheduler(self):
        """A fresh EulerAncestralDiscreteScheduler with trailing timestep spacing (no state carried over)."""
        from diffusers import EulerAncestralDiscreteScheduler

        config = {**self.scheduler_config, "timestep_spacing": "trailing"}
        return EulerAncestralDiscreteScheduler.from_config(config)

    def encode_prompt(self, prompt: str = "") -> torch.Tensor:
        """Text encoder output [1, T, D] of ``prompt`` padded to the tokenizer's length T."""
        tokens = self.tokenizer(
            [prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        )
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        return self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]

    def condition(
        self, rgb: np.ndarray, generator: Optional[torch.Generator], guidance: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(condition latents [B, 4, s, s], prompt embeddings [B, T, D]); B = 2 ([uncond, cond]) with guidance.

        Args:
            rgb: uint8 input image [H, W, 3], composited on grey.
        """
        vae_view = self.vae_preprocess(rgb).to(self.device, self.dtype)
        clip_view = self.clip_preprocess(rgb).to(self.device, self.dtype)
        cond_lat = self.vae.encode(vae_view).latent_dist.sample(generator)
        text, negative_posterior = self._unconditional(vae_view)
        image_embeds = self.vision_encoder(clip_view).image_embeds[:, None, :]  # [1, 1, D]
        ramp = self.ramping_coefficients.to(self.device, self.dtype)[:, None]  # [T, 1]
        if ramp.shape[0] != text.shape[1]:
            raise ModelUnavailable(
                f"the model's ramping_coefficients has {ramp.shape[0]} entries but its tokenizer makes "
                f"{text.shape[1]} tokens: the model folder is inconsistent; {_FIX}"
            )
        cond_embeds = text + image_embeds * ramp
        if not guidance:
            return cond_lat, cond_embeds
        # drawn after the condition latent, from the same generator, as when it was encoded every time
        negative_lat = negative_posterior.sample(generator)
        return torch.cat([negative_lat, cond_lat]), torch.cat([text, cond_embeds])

    @torch.no_grad()
    def _unconditional(self, vae_view: torch.Tensor):
        """(text encoding of the empty prompt [1, T, D], VAE posterior of an all-zero view like
        ``vae_view``): deterministic, the same for every frame, so computed once per pipeline."""
        key = (tuple(vae_view.shape), vae_view.device, vae_view.dtype)
        if self._unconditional_cache is None or self._unconditional_cache[0] != key:
            posterior = self.vae.encode(torch.zeros_like(vae_view)).latent_dist
            self._unconditional_cache = (key, self.encode_prompt(""), posterior)
        return self._unconditional_cache[1:]

    def __call__(self, rgb: np.ndarray, *, seed: int = 42, **kwargs) -> np.ndarray:
        """The uint8 grid [height, width, 3] of six views of ``rgb`` (uint8 [H, W, 3] on grey);
        :meth:`generate` of one frame (keyword arguments as there)."""
        return self.generate([rgb], seed=seed, **kwargs)[0]

    @torch.no_grad()
    def generate(
        self,
        images: Sequence[np.ndarray],
        *,
        steps: int = 75,
        guidance_scale: float = 4.0,
        seed: int | Sequence[int] = 42,
        width: int = OUTPUT_WIDTH,
        height: int = OUTPUT_HEIGHT,
        anchor=None,
        progress: bool = False,
        randomness: str = "seeded",
        output: str = "uint8",
    ) -> list[np.ndarray]:
        """The uint8 grids [height, width, 3] of six views of each image of ``images`` (uint8
        [H, W, 3] on grey), denoised together as one batch.

        ``seed``: one for every frame, or one per frame; each frame has its own generator.
        ``anchor``: a TemporalAnchor (or None): every self-attention call of the main passes
        hands it its key/value input with the layer name, the step index and the frame count; in
        ``record`` mode the first image is frame 0 (the others replay it at once).
        ``randomness``: ``"seeded"`` (ours): every draw from the frame's generator seeded with
        its seed; ``"released"``: only the initial latents and the sampler's noise, as the
        released pipeline; the condition latents and the reference noise come from torch's
        global RNG (one draw per frame, in batch order: independent for every frame, and, as in
        the released code, not reproducible; so they differ from the frames generated alone).
        ``output``: ``"uint8"`` grids, or ``"float"``: float32 in [0, 1] before the rounding (to
        compare generations closer than one 8-bit level).
        """
        if randomness not in RANDOMNESS:
            raise ValueError(f"randomness={randomness!r}: use one of {', '.join(RANDOMNESS)}")
        from diffusers.utils.torch_utils import randn_tensor

        frames = len(images)
        seeds = [seed] * frames if isinstance(seed, int) else list(seed)
        if frames < 1 or len(seeds) != frames:
            raise ValueError(f"{frames} images and {len(seeds)} seeds: give at least one image and one seed each")
        factor = self.vae_scale_factor
        if width % factor or height % factor:
            raise ValueError(f"output size {width}x{height} must be a multiple of {factor}")
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        guidance = guidance_scale > 1.0
        # None: torch's global RNG
        side_generators = generators if randomness == "seeded" else [None] * frames
        conditions = [self.condition(rgb, g, guidance) for rgb, g in zip(images, side_generators)]
        cond_lat = _branch_major([lat for lat, _ in conditions])
        prompt_embeds = _branch_major([embeds for _, embeds in conditions])
        frame_cond_shape = conditions[0][0].shape  # [branches, 4, s, s]: one frame's share

        scheduler = self.make_scheduler()
        scheduler.set_timesteps(steps, device=self.device)
        shape = (1, self.unet.config.in_channels, height // factor, width // factor)
        latents = torch.cat([randn_tensor(shape, generator=g, device=self.device, dtype=self.dtype)
                             for g in generators])
        latents = latents * scheduler.init_noise_sigma

        for step, t in enumerate(tqdm(scheduler.timesteps, desc="denoise", leave=False, disable=not progress)):
            model_input = torch.cat([latents] * 2) if guidance else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise = _branch_major([randn_tensor(frame_cond_shape, generator=g, device=self.device, dtype=self.dtype)
                                   for g in side_generators])
            noisy_cond = scheduler.add_noise(cond_lat, noise, t.reshape(1))
            noisy_cond = scheduler.scale_model_input(noisy_cond, t)

            ref_store: dict[str, torch.Tensor] = {}
            self.unet(noisy_cond, t, encoder_hidden_states=prompt_embeds,
                      cross_attention_kwargs=dict(ref_mode=WRITE, ref_store=ref_store))
            pred = self.unet(
                model_input, t, encoder_hidden_states=prompt_embeds,
                cross_attention_kwargs=dict(ref_mode=READ, ref_store=ref_store, anchor=anchor, step=step,
                                            frames=frames),
            ).sample
            if guidance:
                uncond, cond = pred.chunk(2)
                pred = uncond + guidance_scale * (cond - uncond)
            # a list of generators: frame b's noise from generator b, of the shape it has alone
            latents = scheduler.step(pred, t, latents, generator=generators).prev_sample
        # one frame at a time: the full-size decoder's activations are large, and decoding alone
        # is what the frame gets when generated alone
        return [self.decode(latents[b:b + 1], output) for b in range(frames)]

    def decode(self, latents: torch.Tensor, output: str = "uint8") -> np.ndarray:
        """uint8 image [H, W, 3] of scaled latents [1, 4, h, w] (``output="float"``: float32 in [0, 1],
        before the rounding to 8 bits)."""
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}: use one of {', '.join(OUTPUTS)}")
        latents = unscale_latents(latents) / self.vae.config.scaling_factor
        image = unscale_image(self.vae.decode(latents).sample)  # [-1, 1]
        image = (image / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()
        return image if output == "float" else np.round(image * 255.0).astype(np.uint8)


def _branch_major(per_frame: Sequence[torch.Tensor]) -> torch.Tensor:
    """[branches x frames, ...] of one [branches, ...] tensor per frame: branch 0 of every frame,
    then branch 1 of every frame ([uncond..., cond...] with guidance)."""
    if len(per_frame) == 1:
        return per_frame[0]
    return torch.stack(list(per_frame), dim=1).flatten(0, 1)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def load_pipeline(
    model: str = DEFAULT_MODEL_ID,
    device: torch.device | str = "cpu",
    dtype: Optional[torch.dtype] = None,
) -> Zero123PlusPipeline:
    """Load Zero123++ from a hub id or a local folder in its diffusers layout.

    fp16 on CUDA, fp32 elsewhere unless ``dtype`` says otherwise. Each weighted component is read,
    cast and moved to ``device`` in turn (the seconds each took are in the pipeline's
    ``load_seconds``). Not on threads: diffusers and transformers build models under process-wide
    patches (empty-weight init, default dtype), and two loads at once leave them behind.

    Raises:
        errors.ModelUnavailable: the folder or id cannot be found or a component cannot be
            loaded; the message names the model and the fix.
    """
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    _check_source(model)
    index = _read_json(model, "model_index.json")
    ramping = index.get("ramping_coefficients")
    if not ramping:
        raise ModelUnavailable(
            f"'{model}' has no ramping_coefficients in model_index.json: it is not a Zero123++ model; {_FIX}"
        )

    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    # the components with weights, loaded in this order; the CLIP towers are cast after loading
    # (transformers renamed its dtype keyword)
    loaders = {
        "vae": (AutoencoderKL.from_pretrained, {"torch_dtype": dtype}),
        "unet": (UNet2DConditionModel.from_pretrained, {"torch_dtype": dtype}),
        "text_encoder": (CLIPTextModel.from_pretrained, {}),
        "vision_encoder": (CLIPVisionModelWithProjection.from_pretrained, {}),
    }
    modules, seconds = {}, {}
    for name, (loader, kwargs) in loaders.items():
        begin = time.perf_counter()
        modules[name] = _to(_load(loader, model, name, **kwargs), device, dtype)
        seconds[name] = time.perf_counter() - begin
    scheduler_config = _load(EulerAncestralDiscreteScheduler.load_config, model, "scheduler")
    pipe = Zero123PlusPipeline(
        **modules,
        tokenizer=_load(CLIPTokenizer.from_pretrained, model, "tokenizer"),
        scheduler_config=dict(scheduler_config),
        vae_preprocess=ImagePreprocess.from_config(
            _read_json(model, "feature_extractor_vae/preprocessor_config.json")),
        clip_preprocess=ImagePreprocess.from_config(
            _read_json(model, "feature_extractor_clip/preprocessor_config.json")),
        ramping_coefficients=ramping,
        device=device,
        dtype=dtype,
    )
    pipe.load_seconds = seconds
    return pipe


def _is_local(model: str) -> bool:
    return os.path.exists(model) or model.startswith(("/", ".", "~")) or model.count("/") != 1


def _check_source(model: str) -> None:
    if _is_local(model) and not os.path.isdir(model):
        raise ModelUnavailable(f"Zero123++ model folder '{model}' does not exist: {_FIX}")
    if _is_local(model) and not os.path.isfile(os.path.join(model, "model_index.json")):
        raise ModelUnavailable(
            f"'{model}' has no model_index.json, so it is not a diffusers folder of Zero123++: {_FIX}"
        )


def _load_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, ValueError, KeyError, RuntimeError]
    try:
        from huggingface_hub.errors import EntryNotFoundError

        errors.append(EntryNotFoundError)
    except ImportError:  # older huggingface_hub: its errors are OSErrors
        pass
    return tuple(errors)


def _read_json(model: str, filename: str) -> dict:
    """A JSON file of the model folder (local, or from the hub / its cache)."""
    try:
        if _is_local(model):
            path = os.path.join(model, filename)
        else:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(model, filename)
        with open(path) as f:
            return json.load(f)
    except _load_errors() as err:
        raise ModelUnavailable(f"cannot read {filename} of Zero123++ model '{model}' ({_one_line(err)}): {_FIX}") from None


def _load(loader, model: str, subfolder: str, **kwargs):
    """``loader(model, subfolder=..., **kwargs)`` with load failures turned into ModelUnavailable."""
    try:
        return loader(model, subfolder=subfolder, **kwargs)
    except _load_errors() as err:
        raise ModelUnavailable(
            f"cannot load the {subfolder} of Zero123++ model '{model}' ({_one_line(err)}): {_FIX}"
        ) from None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."
