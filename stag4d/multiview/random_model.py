"""Randomly initialized Zero123++ models of the real classes, for tests and benchmarks.

No weights can be downloaded here, so the loading code is exercised on models of the SAME
classes with random weights, saved with ``save_pretrained`` in the real folder layout
(:func:`save_model_folder`), and the GPU benchmark times the full-size architecture
(:data:`V11_CONFIGS`, the component configs of ``sudo-ai/zero123plus-v1.1``: a Stable Diffusion
2 UNet and VAE, the OpenCLIP ViT-H text tower cut to 23 layers and the ViT-H/14 vision tower).

``python -m stag4d.multiview.random_model OUT [--tiny] [--fp16]`` writes such a folder, which
``gen_mv.py --model OUT`` loads like the real one (whole-command timings, offline runs).
"""
from __future__ import annotations

import argparse
import copy
import json
import os

import numpy as np
import torch

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
    prediction_type="v_prediction", steps_offset=1, timestep_spacing="linspace",
)

V11_CONFIGS: dict = {
    "unet": dict(
        sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=[320, 640, 1280, 1280],
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True,
        upcast_attention=True, norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
    ),
    "vae": dict(
        sample_size=768, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32, act_fn="silu", scaling_factor=0.18215,
    ),
    "text_encoder": dict(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=512,
        bos_token_id=0, pad_token_id=1, eos_token_id=2,
    ),
    "vision_encoder": dict(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
        patch_size=14, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5,
    ),
    # The condition size of v1.1 is assumed to be 320 (one output tile); loading reads the real one.
    "feature_extractor_vae": dict(size=320, image_mean=0.5, image_std=0.8, resample=2),
    "feature_extractor_clip": dict(size=224, image_mean=_CLIP_MEAN, image_std=_CLIP_STD, resample=3),
    "scheduler": _SCHEDULER,
    "model_max_length": 77,
}

TINY_CONFIGS: dict = {
    "unet": dict(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[16, 32],
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        attention_head_dim=4, cross_attention_dim=32, use_linear_projection=True, upcast_attention=True,
        norm_num_groups=8,
    ),
    "vae": dict(
        sample_size=32, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=8,
    ),
    "text_encoder": dict(
        vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=32,
        bos_token_id=53, eos_token_id=54, pad_token_id=0,  # ids of write_tokenizer's vocabulary
    ),
    "vision_encoder": dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=16,
        patch_size=4, projection_dim=32, hidden_act="gelu",
    ),
    "feature_extractor_vae": dict(size=16, image_mean=0.5, image_std=0.8, resample=2),
    "feature_extractor_clip": dict(size=16, image_mean=_CLIP_MEAN, image_std=_CLIP_STD, resample=3),
    "scheduler": _SCHEDULER,
    "model_max_length": 77,
}


def build_models(configs: dict, seed: int = 0, device="cpu") -> dict:
    """Random-weight torch modules ``{"vae", "unet", "text_encoder", "vision_encoder"}`` (fp32).

    ``device``: where the weights are created and initialized (the full-size models initialize in
    seconds on a GPU, in minutes on a CPU).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    models = {}
    with torch.device(device):
        torch.manual_seed(seed)
        models["unet"] = UNet2DConditionModel(**configs["unet"])
        torch.manual_seed(seed + 1)
        models["vae"] = AutoencoderKL(**configs["vae"])
        torch.manual_seed(seed + 2)
        models["text_encoder"] = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        torch.manual_seed(seed + 3)
        models["vision_encoder"] = CLIPVisionModelWithProjection(CLIPVisionConfig(**configs["vision_encoder"]))
    return {name: model.eval() for name, model in models.items()}


def ramping_coefficients(configs: dict) -> list[float]:
    """One coefficient per text token, rising like the real ones (about 0 to 1.2)."""
    return np.linspace(0.0, 1.2, configs["model_max_length"]).round(6).tolist()


def preprocessor_config(spec: dict) -> dict:
    """A CLIPImageProcessor ``preprocessor_config.json`` (resize, centre crop, rescale, normalize)."""
    size = spec["size"]
    return {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
        "do_resize": True, "image_mean": spec["image_mean"], "image_std": spec["image_std"],
        "image_processor_type": "CLIPImageProcessor", "resample": spec["resample"],
        "rescale_factor": 1.0 / 255.0, "size": {"shortest_edge": size},
    }


def write_tokenizer(folder: str, model_max_length: int = 77) -> None:
    """A small CLIP BPE tokenizer (letters, end-of-word letters, specials) in the real file layout."""
    os.makedirs(folder, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["!"] + letters + [f"{c}</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({token: i for i, token in enumerate(tokens)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "!"}
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump(special, f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({**special, "model_max_length": model_max_length, "tokenizer_class": "CLIPTokenizer"}, f)


def load_tokenizer(folder: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder)


def save_model_folder(folder: str, configs: dict = TINY_CONFIGS, seed: int = 0,
                      dtype: torch.dtype = torch.float32, device="cpu") -> str:
    """Write a random Zero123++ model in the diffusers folder layout of ``sudo-ai/zero123plus-v1.1``.

    ``dtype``: of the stored weights; ``device``: where they are initialized (see build_models).
    """
    from diffusers import EulerAncestralDiscreteScheduler
    from transformers import CLIPImageProcessor

    os.makedirs(folder, exist_ok=True)
    for name, model in build_models(configs, seed, device=device).items():
        model.to("cpu", dtype).save_pretrained(os.path.join(folder, name))
    write_tokenizer(os.path.join(folder, "tokenizer"), configs["model_max_length"])
    EulerAncestralDiscreteScheduler(**configs["scheduler"]).save_pretrained(os.path.join(folder, "scheduler"))
    for name in ("feature_extractor_vae", "feature_extractor_clip"):
        settings = {k: v for k, v in preprocessor_config(configs[name]).items() if k != "image_processor_type"}
        CLIPImageProcessor(**settings).save_pretrained(os.path.join(folder, name))
    index = {
        "_class_name": "Zero123PlusPipeline",
        "feature_extractor_clip": ["transformers", "CLIPImageProcessor"],
        "feature_extractor_vae": ["transformers", "CLIPImageProcessor"],
        "ramping_coefficients": ramping_coefficients(configs),
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "vision_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    }
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return folder


def build_pipeline(configs: dict, device, dtype, tokenizer_folder: str, seed: int = 0):
    """A Zero123PlusPipeline of random models built in memory (for the benchmark)."""
    from diffusers import EulerAncestralDiscreteScheduler

    from .pipeline import ImagePreprocess, Zero123PlusPipeline

    write_tokenizer(tokenizer_folder, configs["model_max_length"])
    models = build_models(configs, seed, device=device)
    return Zero123PlusPipeline(
        **models,
        tokenizer=load_tokenizer(tokenizer_folder),
        scheduler_config=dict(EulerAncestralDiscreteScheduler(**configs["scheduler"]).config),
        vae_preprocess=ImagePreprocess.from_config(preprocessor_config(configs["feature_extractor_vae"])),
        clip_preprocess=ImagePreprocess.from_config(preprocessor_config(configs["feature_extractor_clip"])),
        ramping_coefficients=ramping_coefficients(configs),
        device=device,
        dtype=dtype,
    )


def tiny_configs() -> dict:
    """A deep copy of :data:`TINY_CONFIGS` to modify."""
    return copy.deepcopy(TINY_CONFIGS)


def main(argv: list[str] | None = None) -> None:
    """``python -m stag4d.multiview.random_model OUT [--tiny] [--fp16]``."""
    parser = argparse.ArgumentParser(
        prog="python -m stag4d.multiview.random_model",
        description="Write a random-weight Zero123++ v1.1 in its diffusers folder layout; gen_mv.py --model OUT "
                    "loads it like the real model (offline runs, speed measurements; its views are noise).")
    parser.add_argument("out", help="folder to write (created)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model instead of v1.1's size")
    parser.add_argument("--fp16", action="store_true", help="store float16 weights (as gen_mv runs them on CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the weights are initialized (the full size takes minutes on a CPU)")
    args = parser.parse_args(argv)
    save_model_folder(args.out, TINY_CONFIGS if args.tiny else V11_CONFIGS, args.seed,
                      torch.float16 if args.fp16 else torch.float32, args.device)
    print(f"random-weight Zero123++ ({'tiny' if args.tiny else 'v1.1 size'}, "
          f"{'fp16' if args.fp16 else 'fp32'}) written to {args.out}")


if __name__ == "__main__":
    main()
