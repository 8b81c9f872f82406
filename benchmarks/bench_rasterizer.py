"""Benchmark: differentiable Gaussian rasterization, forward and forward + backward.

    python benchmarks/bench_rasterizer.py            # torch backend on the CPU, 10k Gaussians, 128x128
    python benchmarks/bench_rasterizer.py --cuda     # also gsplat and the torch backend on the GPU,
                                                     # 50k Gaussians, 512x512

Scene: N Gaussians uniform in a ball of radius 0.5, scales uniform in [0.01, 0.03], random
rotations, opacities uniform in [0.05, 0.95], SH degree 0, seen from Camera.orbit(0, 0) at radius
2 over a white background. Loss: MSE of image and alpha against a fixed random target. Prints a
table of medians of repeated runs after warm-up (CUDA events on the GPU), all rows measured in
one process. Targets (issue 2): torch CPU fwd+bwd <= 300 ms; gsplat GPU fwd+bwd <= 3 ms.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch
from timing import time_calls
from torch.profiler import ProfilerActivity, profile

from cam_utils import Camera
from stag4d.rasterizer import GaussianParams, render


def ball_scene(n: int, device: str, seed: int = 0) -> list[torch.Tensor]:
    """Raw parameters [means, log_scales, quats, opacity_logits, sh [n, 1, 3]] as float32 leaves."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(n, 3, generator=gen)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    means = direction * 0.5 * torch.rand(n, 1, generator=gen) ** (1 / 3)
    log_scales = torch.log(0.01 + 0.02 * torch.rand(n, 3, generator=gen))
    quats = torch.randn(n, 4, generator=gen)
    opacity_logits = torch.logit(0.05 + 0.9 * torch.rand(n, generator=gen))
    sh = torch.randn(n, 1, 3, generator=gen) * 0.5
    return [t.to(device).requires_grad_(True) for t in (means, log_scales, quats, opacity_logits, sh)]


def pipelined_ms(fn: Callable[[], None], repeats: int) -> float:
    """Mean GPU milliseconds per call of ``repeats`` back-to-back calls (no sync in between)."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / repeats


def raw_gsplat(params: list[torch.Tensor], camera: Camera, background: torch.Tensor, intrinsics: torch.Tensor):
    """gsplat.rasterization called directly (no wrapper), same inputs and settings as the backend.

    ``intrinsics`` [1, 3, 3] is built once on the device by the caller: a per-call K copied from
    the host would stall the host on the GPU and hide what the function itself costs.
    """
    from gsplat import rasterization

    means, log_scales, quats, opacity_logits, sh = params
    colors, alphas, meta = rasterization(
        means, quats, torch.exp(log_scales), torch.sigmoid(opacity_logits), sh, camera.world_to_camera[None],
        intrinsics, camera.width, camera.height, near_plane=camera.near, far_plane=camera.far,
        sh_degree=0, packed=False, backgrounds=background[None], render_mode="RGB+D")
    return colors[0, ..., :3].permute(2, 0, 1), alphas[0].permute(2, 0, 1), meta


def profile_gsplat(num: int, size: int, iterations: int = 10) -> None:
    """Print the CUDA kernels of gsplat fwd+bwd (through our wrapper), summed over ``iterations``."""

    params = ball_scene(num, "cuda")
    gaussians = GaussianParams(*params[:4], sh=params[4])
    camera = Camera.orbit(0.0, 0.0, 2.0, size=size, device="cuda")
    background = torch.ones(3, device="cuda")

    def step():
        out = render(gaussians, camera, background, backend="gsplat")
        (out.image.sum() + out.alpha.sum()).backward()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iterations):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    print(f"gsplat fwd+bwd, {num} Gaussians at {size}x{size}: GPU kernel time {kernel_us / iterations / 1e3:.2f} ms "
          f"per iteration (sum over kernels)")
    print(events.table(sort_by="self_device_time_total", row_limit=12))


def measure(backend: str, device: str, num: int, size: int, warmup: int, repeats: int) -> dict:
    """Timings of one backend ("torch", "gsplat", or "gsplat-raw": gsplat without our wrapper)."""
    params = ball_scene(num, device)
    gaussians = GaussianParams(*params[:4], sh=params[4])
    camera = Camera.orbit(0.0, 0.0, 2.0, size=size, device=device)
    background = torch.ones(3, device=device)
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(4, size, size, generator=gen).to(device)
    intrinsics = camera.intrinsics[None].to(device)

    def forward():
        if backend == "gsplat-raw":
            image, alpha, _ = raw_gsplat(params, camera, background, intrinsics)
            return image, alpha
        out = render(gaussians, camera, background, backend=backend)
        return out.image, out.alpha

    def forward_backward():
        for p in params:
            p.grad = None
        image, alpha = forward()
        loss = torch.nn.functional.mse_loss(torch.cat([image, alpha]), target)
        loss.backward()

    def forward_no_grad():
        with torch.no_grad():
            forward()

    cuda = device == "cuda"
    fwd, _ = time_calls(forward, cuda, warmup, repeats)
    fwd_bwd, _ = time_calls(forward_backward, cuda, warmup, repeats)
    no_grad, _ = time_calls(forward_no_grad, cuda, warmup, repeats)
    pipelined = pipelined_ms(forward_backward, repeats) if device == "cuda" else float("nan")
    with torch.no_grad():
        visible = int((forward()[1] > 0).sum())
    return dict(backend=backend, device=device, num=num, size=size, covered=visible / size**2,
                fwd=statistics.median(fwd), fwd_bwd=statistics.median(fwd_bwd), no_grad=statistics.median(no_grad),
                fwd_bwd_min=min(fwd_bwd), pipelined=pipelined, repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda", action="store_true", help="also benchmark on the GPU (gsplat and torch)")
    parser.add_argument("--cpu-num", type=int, default=10_000)
    parser.add_argument("--cpu-size", type=int, default=128)
    parser.add_argument("--gpu-num", type=int, default=50_000)
    parser.add_argument("--gpu-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="with --cuda: print gsplat's CUDA kernel times")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    if not args.skip_cpu:
        rows.append(measure("torch", "cpu", args.cpu_num, args.cpu_size, args.warmup, args.repeats))
    if args.cuda:
        for backend in ("gsplat", "gsplat-raw"):
            rows.append(measure(backend, "cuda", args.gpu_num, args.gpu_size, args.warmup + 5, args.repeats * 5))
        rows.append(measure("torch", "cuda", args.gpu_num, args.gpu_size, args.warmup, args.repeats))

    device_names = {"cpu": f"CPU, {torch.get_num_threads()} threads"}
    if args.cuda:
        device_names["cuda"] = torch.cuda.get_device_name()
    print(f"torch {torch.__version__}; " + "; ".join(f"{k}: {v}" for k, v in device_names.items()))
    header = (f"{'backend':<10} {'device':<6} {'N':>7} {'size':>9} {'covered':>8} {'fwd ms':>8} "
              f"{'fwd+bwd ms':>11} {'(min)':>8} {'pipelined':>10} {'no-grad ms':>11} {'runs':>5}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['backend']:<10} {r['device']:<6} {r['num']:>7} {r['size']:>4}x{r['size']:<4} {r['covered']:>8.3f} "
              f"{r['fwd']:>8.2f} {r['fwd_bwd']:>11.2f} {r['fwd_bwd_min']:>8.2f} {r['pipelined']:>10.2f} "
              f"{r['no_grad']:>11.2f} {r['repeats']:>5}")
    print("medians of repeated runs after warm-up (CUDA events on the GPU); fwd = forward with autograd "
          "recording; pipelined = fwd+bwd calls back to back without a sync, mean; covered = fraction of "
          "pixels with alpha > 0; gsplat-raw = gsplat.rasterization itself (our backend calls its steps directly). "
          "Targets: torch/cpu fwd+bwd <= 300 ms, gsplat/cuda fwd+bwd <= 3 ms")
    if args.cuda and args.profile:
        profile_gsplat(args.gpu_num, args.gpu_size)


if __name__ == "__main__":
    main()
