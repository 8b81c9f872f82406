"""Benchmark: one Zero123 SDS call (forward + backward to the image) at full model size.

The zero123-xl architecture is built from its configs (guidance/random_model.py) with RANDOM
weights (no weights can be downloaded here), in fp16 on CUDA. Timing does not depend on the weight
values.

    python benchmarks/bench_sds.py                      # batch 4, 256x256 renders, all variants
    python benchmarks/bench_sds.py --variants eager --render-size 512
    python benchmarks/bench_sds.py --tiny --device cpu  # smoke test of the script itself

Prints a table: median (and p10/p90) milliseconds of repeated runs after warm-up, CUDA events on
GPU, all variants measured side by side in one process.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from timing import percentile, time_calls

from guidance.random_model import build_random_components
from guidance.zero123 import Zero123Guidance, resize_square


def set_variant(guide, channels_last: bool, compiled_unet=None, compiled_vae=None) -> None:
    """Switch the UNet and VAE between memory formats / compiled callables (side-by-side runs)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    guide.unet.to(memory_format=fmt)
    guide.vae.to(memory_format=fmt)
    guide.memory_format = fmt
    guide.unet_forward = compiled_unet if compiled_unet is not None else guide.unet
    guide.vae_moments = compiled_vae if compiled_vae is not None else guide.posterior_moments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--render-size", type=int, default=256, help="render resolution fed to sds_loss")
    parser.add_argument("--frames", type=int, default=8, help="frames embedded by prepare()")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--variants", default="eager,channels_last,compile,compile_all,compile_all+channels_last")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny model (smoke test of this script)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()


    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    cuda = device.type == "cuda"

    def timer(fn, iters: int, warmup: int) -> list[float]:
        return time_calls(fn, cuda, warmup, iters)[0]

    t0 = time.perf_counter()
    guide = Zero123Guidance(build_random_components(device, args.tiny), device, dtype, guidance_scale=5.0)
    build_s = time.perf_counter() - t0
    params = {name: sum(p.numel() for p in getattr(guide, name).parameters()) / 1e6
              for name in ("unet", "vae", "image_encoder", "projection")}

    gen = torch.Generator(device=device).manual_seed(0)
    ref = torch.rand(args.frames, 3, 512, 512, device=device, generator=gen)
    anchors = torch.rand(args.frames, 6, 3, 256, 256, device=device, generator=gen)
    prepare_ms = timer(lambda: guide.prepare(ref, anchors), iters=3, warmup=1)

    batch = args.batch
    images = torch.rand(batch, 3, args.render_size, args.render_size, device=device, generator=gen)
    images.requires_grad_(True)
    frame_idx = torch.arange(batch, device=device) % args.frames
    cond_view = (torch.arange(batch, device=device) % 7) - 1
    d_elev = torch.linspace(-20, 20, batch, device=device)
    d_azim = torch.linspace(-150, 150, batch, device=device)
    d_radius = torch.zeros(batch, device=device)

    def sds_step():
        loss = guide.sds_loss(images, frame_idx, cond_view, d_elev, d_azim, d_radius, step=1000)
        loss.backward()
        images.grad = None

    # Variants: "eager", "channels_last" (UNet + VAE), "compile" (UNet only), "compile_all"
    # (UNet + VAE encoder, as Zero123Guidance.optimize(compile=True)), "+channels_last" suffixes.
    rows = []
    compiled_unet = compiled_vae = None
    fixed_noise = guide.draw_noise(batch, 1000, generator=torch.Generator(device=device).manual_seed(1))
    reference_loss = None
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        base = variant.split("+")[0]
        channels_last = "channels_last" in variant
        if base.startswith("compile") and compiled_unet is None:
            compiled_unet = torch.compile(guide.unet)
        if base == "compile_all" and compiled_vae is None:
            compiled_vae = torch.compile(guide.posterior_moments)
        set_variant(guide, channels_last, compiled_unet if base.startswith("compile") else None,
                    compiled_vae if base == "compile_all" else None)
        c0 = time.perf_counter()
        sds_step()  # first call: compilation, if any
        if device.type == "cuda":
            torch.cuda.synchronize()
        first_s = time.perf_counter() - c0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = timer(sds_step, args.iters, args.warmup)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        # Same draws in every variant: the loss must agree with the first variant's.
        # (with grad enabled, as in the timed calls, so that nothing recompiles)
        check = guide.sds_loss(images, frame_idx, cond_view, d_elev, d_azim, d_radius, 1000, fixed_noise).item()
        reference_loss = check if reference_loss is None else reference_loss
        rows.append(dict(variant=variant, median_ms=statistics.median(times), p10_ms=percentile(times, 0.1),
                         p90_ms=percentile(times, 0.9), first_call_s=first_s, peak_gib=peak, loss=check,
                         rel_diff=abs(check - reference_loss) / max(abs(reference_loss), 1e-12)))

    # Breakdown (eager, contiguous): the UNet call alone and the VAE encode forward + backward.
    set_variant(guide, False, None)
    noise = guide.draw_noise(batch, 1000)
    latent_in = torch.randn(2 * batch, 8, guide.latent_size, guide.latent_size, device=device, dtype=dtype)
    context = torch.randn(2 * batch, 1, guide.unet.config.cross_attention_dim, device=device, dtype=dtype)
    t_in = torch.cat([noise.timesteps, noise.timesteps])

    def unet_only():
        with torch.no_grad():
            guide.unet(latent_in, t_in, encoder_hidden_states=context)

    def vae_only():

        latents = guide.encode_images(resize_square(images), noise.latent_eps)
        latents.float().sum().backward()
        images.grad = None

    breakdown = {
        f"unet forward (batch {2 * batch}, both CFG branches)": statistics.median(timer(unet_only, args.iters, args.warmup)),
        f"vae encode fwd+bwd (batch {batch})": statistics.median(timer(vae_only, args.iters, args.warmup)),
    }

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\nZero123 SDS benchmark: {name}, torch {torch.__version__}, dtype {dtype}, "
          f"{'TINY model' if args.tiny else 'zero123-xl architecture, random weights'}")
    print("params (M): " + ", ".join(f"{k} {v:.1f}" for k, v in params.items()) + f"; built in {build_s:.1f} s")
    print(f"prepare(): {args.frames} frames x (1 + 6) views: median {statistics.median(prepare_ms):.1f} ms")
    print(f"\nsds_loss forward + backward to the image: batch {batch}, render {args.render_size}x{args.render_size}, "
          f"{args.iters} runs after {args.warmup} warm-up")
    print(f"{'variant':<28}{'median ms':>11}{'p10':>9}{'p90':>9}{'1st call s':>12}{'peak GiB':>10}"
          f"{'loss rel. diff':>16}")
    for r in rows:
        print(f"{r['variant']:<28}{r['median_ms']:>11.2f}{r['p10_ms']:>9.2f}{r['p90_ms']:>9.2f}"
              f"{r['first_call_s']:>12.1f}{r['peak_gib']:>10.2f}{r['rel_diff']:>16.1e}")
    print("\nbreakdown (eager):")
    for k, v in breakdown.items():
        print(f"  {k:<48}{v:>9.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, batch=batch, render_size=args.render_size, rows=rows, breakdown=breakdown,
                           prepare_ms=statistics.median(prepare_ms), params_m=params, tiny=args.tiny), f, indent=2)


if __name__ == "__main__":
    main()
