"""Benchmark: mean squared distance to the 3 nearest neighbours, simple_knn extension vs torch.

    python benchmarks/bench_knn.py                              # 10k, 100k, 1M points on CUDA
    python benchmarks/bench_knn.py --sizes 2000 --device cpu    # smoke test (torch path only)

Clouds: uniform in a ball of radius 0.5 (the model's initialization) and "clustered" (8 tight
Gaussian blobs plus 0.1% outliers spread 10x wider). Prints a table of median milliseconds of
repeated runs after warm-up (CUDA events on GPU), both implementations side by side in one
process, plus the largest relative difference between them. The torch path at a size whose
estimated time (from the previous size, quadratic) exceeds --torch-max-seconds runs once,
without warm-up, and is marked "1 run"; above --torch-skip-seconds it is skipped (estimate shown).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Optional

import torch
from timing import time_calls

from stag4d.gaussians import knn


def ball_cloud(n: int, device: str, seed: int = 0) -> torch.Tensor:
    """n points uniform in the ball of radius 0.5. -> [n,3] float32."""
    g = torch.Generator(device=device).manual_seed(seed)
    direction = torch.randn(n, 3, device=device, generator=g)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
    radius = 0.5 * torch.rand(n, 1, device=device, generator=g).pow(1.0 / 3.0)
    return direction * radius


def clustered_cloud(n: int, device: str, seed: int = 0) -> torch.Tensor:
    """8 Gaussian blobs (sigma 0.02) in [-0.5,0.5]^3 plus n/1000 outliers in [-5,5]^3."""
    g = torch.Generator(device=device).manual_seed(seed)
    outliers = max(1, n // 1000)
    per_blob = (n - outliers) // 8
    centers = torch.rand(8, 1, 3, device=device, generator=g) - 0.5
    blobs = (centers + 0.02 * torch.randn(8, per_blob, 3, device=device, generator=g)).reshape(-1, 3)
    far = (torch.rand(n - blobs.shape[0], 3, device=device, generator=g) * 2 - 1) * 5
    return torch.cat([blobs, far])


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(((a - b).abs() / b.abs().clamp_min(1e-30)).max())


def fmt_ms(times: Optional[list[float]]) -> str:
    if not times:
        return "-"
    median = statistics.median(times)
    return f"{median:10.2f}" + ("" if len(times) > 1 else " (1 run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--clouds", nargs="+", default=["ball", "clustered"],
                        choices=["ball", "clustered"])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--torch-max-seconds", type=float, default=30.0)
    parser.add_argument("--torch-skip-seconds", type=float, default=150.0)
    args = parser.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device; use --device cpu for a smoke test")
    cuda = args.device == "cuda"
    ext = knn.load_extension() if cuda else None
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; extension: "
          f"{'simple_knn._C' if ext is not None else 'not available'}")
    print(f"median ms of {args.repeats} runs after {args.warmup} warm-up runs")
    header = (f"{'cloud':>9} {'N':>9} {'extension ms':>14} {'torch ms':>18} {'speed-up':>9} "
              f"{'max rel diff':>13}")
    print(header)
    print("-" * len(header))
    makers = {"ball": ball_cloud, "clustered": clustered_cloud}
    for cloud_index, cloud in enumerate(args.clouds):
        last_torch: Optional[tuple[int, float]] = None
        for n in args.sizes:
            points = makers[cloud](n, args.device)
            ext_times, ext_out = None, None
            if ext is not None:
                ext_times, ext_out = time_calls(lambda: ext.distCUDA2(points), cuda,
                                                args.warmup, args.repeats)
            estimate = None if last_torch is None else last_torch[1] * (n / last_torch[0]) ** 2
            torch_fn = lambda: knn.mean_sq_dist_knn3(points, backend="torch")  # noqa: E731
            torch_times, torch_out, note = None, None, ""
            if estimate is not None and estimate > args.torch_skip_seconds:
                note = f"torch skipped (estimated {estimate:.0f} s)"
            elif estimate is not None and estimate > args.torch_max_seconds and cloud_index > 0:
                # the torch path's cost does not depend on the cloud: measured on the first one
                note = f"torch skipped (estimated {estimate:.0f} s; same cost as {args.clouds[0]})"
            elif estimate is not None and estimate > args.torch_max_seconds:
                torch_times, torch_out = time_calls(torch_fn, cuda, 0, 1)
            else:
                torch_times, torch_out = time_calls(torch_fn, cuda, args.warmup, args.repeats)
            if torch_times is not None:
                last_torch = (n, statistics.median(torch_times) / 1e3)
            diff = "-"
            if ext_out is not None and torch_out is not None:
                diff = f"{max_rel_diff(ext_out, torch_out):.1e}"
            speedup = "-"
            if ext_times and torch_times:
                speedup = f"{statistics.median(torch_times) / statistics.median(ext_times):8.0f}x"
            print(f"{cloud:>9} {n:>9} {fmt_ms(ext_times):>14} {fmt_ms(torch_times):>18} "
                  f"{speedup:>9} {diff:>13} {note}", flush=True)
            del points, ext_out, torch_out
            if args.device == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
