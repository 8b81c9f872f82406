"""Benchmark the real trainer's step in the faithful setting, with full-size Zero123 guidance.

The zero123-xl architecture is built from its configs (benchmarks/bench_sds.py) with RANDOM
weights (no weights can be downloaded here), fp16 on CUDA: the same compute as the real model.
The trainer is ``trainer.Trainer`` with ``configs/stag4d.yaml``, on a real dataset.

    # per-step median in the issue's setting: fine stage, 512x512 renders, batch 4,
    # 10k Gaussians, no densification (the step counter is placed after the densification window)
    python benchmarks/bench_train_step.py --path ../shared/data/minions --steps 30
    # the whole default schedule (8000 steps with resolution schedule and densification), wall time
    python benchmarks/bench_train_step.py --path ../shared/data/minions --full

Prints a table: median / p10 / p90 of per-step milliseconds (CUDA events) after warm-up, a
breakdown of one profiled stretch by phase (trainer's record_function labels) and peak memory.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PHASES = ("deformation", "render_reference", "render_random", "sds_forward", "backward", "optimizer",
          "densification")


def build_trainer(args, overrides: list[str]):
    from bench_sds import build_components
    from config_utils import load_config
    from guidance.zero123 import Zero123Guidance
    from trainer import Trainer

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    guide = Zero123Guidance(build_components(device, args.tiny), device, dtype, guidance_scale=5.0)
    guide.optimize(compile=args.compile)
    cfg = load_config(args.config, [f"path={args.path}", "save_path=bench_train_step", f"device={args.device}",
                                    f"outdir={args.outdir}", f"valid_dir={args.outdir}/valid", *overrides])
    return Trainer(cfg, guidance=guide)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def time_steps(trainer, steps: int, warmup: int, cuda: bool) -> list[float]:
    for _ in range(warmup):
        trainer.train_step()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            trainer.train_step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            trainer.train_step()
            times.append((time.perf_counter() - t0) * 1000.0)
    return times


def phase_breakdown(trainer, steps: int, cuda: bool) -> dict[str, tuple[float, float]]:
    """Per phase: (host ms per step, device ms per step) from torch.profiler over ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
    result = {}
    for event in prof.key_averages():
        if event.key in PHASES:
            device_us = getattr(event, "device_time_total", None)
            if device_us is None:
                device_us = getattr(event, "cuda_time_total", 0.0)
            result[event.key] = (event.cpu_time_total / 1000.0 / steps, device_us / 1000.0 / steps)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="../shared/data/minions")
    parser.add_argument("--config", default="configs/stag4d.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--start-step", type=int, default=7000,
                        help="step counter before timing: fine stage, ratio 1 (512 renders), past densification")
    parser.add_argument("--full", action="store_true", help="run the whole default schedule and print wall time")
    parser.add_argument("--compile", action="store_true", help="torch.compile the guidance UNet")
    parser.add_argument("--tiny", action="store_true", help="tiny guidance (smoke test of this script on CPU)")
    parser.add_argument("--outdir", default="/tmp/bench_train_step")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. num_pts=10000 batch_size=4")
    args = parser.parse_args()
    cuda = torch.device(args.device).type == "cuda"

    t0 = time.perf_counter()
    trainer = build_trainer(args, args.overrides)
    startup_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    if args.full:
        t1 = time.perf_counter()
        trainer.train()
        if cuda:
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t1
        print(f"| mode | start-up s | training s | total s | steps | Gaussians | peak GiB |")
        print(f"|---|---|---|---|---|---|---|")
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        print(f"| full schedule | {startup_s:.1f} | {train_s:.1f} | {startup_s + train_s:.1f} | {trainer.step} "
              f"| {trainer.model.num} | {peak:.2f} |")
        return

    trainer.step = args.start_step
    times = time_steps(trainer, args.steps, args.warmup, cuda)
    phases = phase_breakdown(trainer, args.profile_steps, cuda)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"device: {name}; Gaussians: {trainer.model.num}; batch {trainer.cfg.batch_size}; "
          f"ref {trainer.cfg.ref_size}px; start-up {startup_s:.1f} s")
    print("| step ms median | p10 | p90 | peak GiB |")
    print("|---|---|---|---|")
    print(f"| {statistics.median(times):.1f} | {percentile(times, 0.1):.1f} | {percentile(times, 0.9):.1f} "
          f"| {peak:.2f} |")
    print("\n| phase | host ms/step | device ms/step |")
    print("|---|---|---|")
    for phase in PHASES:
        host, device_ms = phases.get(phase, (0.0, 0.0))
        print(f"| {phase} | {host:.1f} | {device_ms:.1f} |")


if __name__ == "__main__":
    main()
