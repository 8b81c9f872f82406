"""Randomly initialized Zero123 (zero123-xl) models of the real classes, for tests and benchmarks.

No weights can be downloaded here, so the loading code is exercised on models of the SAME classes
with random weights, saved with ``Zero123Components.save_pretrained`` in the real folder layout,
and the GPU benchmarks time the full-size architecture (the component configs of
``ashawkey/zero123-xl-diffusers``): timing does not depend on the weight values.
"""
from __future__ import annotations

import argparse

import torch

# zero123-xl configs (diffusers layout of ashawkey/zero123-xl-diffusers).
# UNet: Stable Diffusion 1.x UNet (as lambdalabs/sd-image-variations, which Zero123 fine-tunes)
# with 8 input channels (4 noisy + 4 condition latent); 256x256 images -> 32x32 latents.
UNET_CONFIG = dict(
    sample_size=32,
    in_channels=8,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)
# VAE: the Stable Diffusion KL-f8 autoencoder.
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=256,
    scaling_factor=0.18215,
)
# Image encoder: CLIP ViT-L/14 vision tower with a 768-d projection.
CLIP_VISION_CONFIG = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_channels=3,
    image_size=224,
    patch_size=14,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)
PROCESSOR_CONFIG = dict(
    size={"shortest_edge": 224},
    crop_size={"height": 224, "width": 224},
    image_mean=[0.48145466, 0.4578275, 0.40821073],
    image_std=[0.26862954, 0.26130258, 0.27577711],
)
PROJECTION_CONFIG = dict(embedding_dim=768, additional_embeddings=4)

# The tiny model: the same block types, 256 px -> 32x32 latents and 4 latent channels, a 16-d
# embedding (CLIP projection = UNet cross-attention = camera projection width) instead of 768.
TINY_EMBED = 16
TINY_OVERRIDES = dict(
    unet=dict(block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, cross_attention_dim=TINY_EMBED,
              attention_head_dim=4, norm_num_groups=4),
    vae=dict(block_out_channels=(4, 8, 8, 8), layers_per_block=1, norm_num_groups=4),
    clip=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=32,
              projection_dim=TINY_EMBED),
    projection=dict(embedding_dim=TINY_EMBED),
)


def build_random_components(device: torch.device | str = "cpu", tiny: bool = False, seed: int = 0):
    """Zero123Components with random weights (seeded), built directly on ``device``: zero123-xl's
    architecture, or with ``tiny`` a model of the same classes with about 130k parameters."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from guidance.zero123 import CLIPCameraProjection, Zero123Components

    def cfg(base, key):
        return {**base, **(TINY_OVERRIDES[key] if tiny else {})}

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg(UNET_CONFIG, "unet"))
        vae = AutoencoderKL(**cfg(VAE_CONFIG, "vae"))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg(CLIP_VISION_CONFIG, "clip")))
        projection = CLIPCameraProjection(**cfg(PROJECTION_CONFIG, "projection"))
    return Zero123Components(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        feature_extractor=CLIPImageProcessor(**PROCESSOR_CONFIG),
        projection=projection,
    )


def save_random_model(folder: str, tiny: bool = False, fp16: bool = False, seed: int = 0) -> None:
    """Write a random-weight Zero123 in the released folder layout (fp16 files as the "fp16" variant)."""
    components = build_random_components("cpu", tiny, seed)
    if fp16:
        for module in (components.vae, components.unet, components.image_encoder, components.projection):
            module.to(torch.float16)
    components.save_pretrained(folder, variant="fp16" if fp16 else None)


def main(argv: list[str] | None = None) -> None:
    """``python -m guidance.random_model OUT [--tiny] [--fp16]``: a model folder that ``main.py
    zero123_model=OUT`` loads like the real one, for offline runs and speed measurements."""

    parser = argparse.ArgumentParser(
        prog="python -m guidance.random_model",
        description="Write a random-weight Zero123 in the released folder layout; main.py zero123_model=OUT "
                    "loads it like the real model (offline runs, speed measurements; its images are noise).")
    parser.add_argument("out", help="folder to write (created)")
    parser.add_argument("--tiny", action="store_true", help="a ~130k-parameter model instead of zero123-xl's size")
    parser.add_argument("--fp16", action="store_true", help="store float16 weights as the fp16 variant")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    save_random_model(args.out, args.tiny, args.fp16, args.seed)
    print(f"random-weight Zero123 ({'tiny' if args.tiny else 'zero123-xl size'}) written to {args.out}")


if __name__ == "__main__":
    main()
