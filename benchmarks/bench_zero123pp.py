"""Benchmark: Zero123++ v1.1 time per frame and peak memory, with and without the temporal anchor.

    python benchmarks/bench_zero123pp.py                          # full size on CUDA (fp16)
    python benchmarks/bench_zero123pp.py --tiny --device cpu --steps 2 --repeats 1   # smoke test

The full-size architecture of ``sudo-ai/zero123plus-v1.1`` (``random_model.V11_CONFIGS``: SD2
UNet and VAE, 23-layer OpenCLIP-H text tower, ViT-H/14 vision tower) with random weights (the
time does not depend on the weights), a 720x720 RGBA input, 640x960 output, 75 steps, guidance
4.0. Rows, measured side by side in one process after a warm-up, median of ``--repeats`` runs
(CUDA events):

* ``off``: plain Zero123++ (no anchor);
* ``record``: frame 0 with the anchor recording its self-attention key/value inputs to the CPU;
* ``replay``: a later frame blending frame 0's records into its own;
  each of the two with the records in pinned (page-locked) and in pageable host memory.

Columns: seconds per frame and extra over ``off``; peak GPU memory (max_memory_allocated) and
extra; host memory of the records, measured (``TemporalAnchor.nbytes``) and by the formula
(``record_bytes``). The first pinned record also pays for page-locking the host memory: its time
is shown apart ("first").
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from typing import Callable

import numpy as np
import torch

from stag4d.multiview import TemporalAnchor, record_bytes
from stag4d.multiview.pipeline import composite_on_gray
from stag4d.multiview.random_model import TINY_CONFIGS, V11_CONFIGS, build_pipeline


def disk_frame(i: int, size: int = 720) -> np.ndarray:
    """uint8 RGB [size, size, 3] on grey: a coloured disk that moves with i."""
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (xx - 0.4 * size - 0.02 * size * i) ** 2 + (yy - size / 2) ** 2 < (0.25 * size) ** 2
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[inside] = (200, 60 + 20 * i, 30, 255)
    return composite_on_gray(rgba)


def timed(fn: Callable[[], np.ndarray], device: torch.device) -> tuple[float, int, np.ndarray]:
    """(seconds, peak GPU bytes during the call, result) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / 1e3, torch.cuda.max_memory_allocated(), result
    begin = time.perf_counter()
    result = fn()
    return time.perf_counter() - begin, 0, result


def rss_bytes() -> int:
    """Resident memory of this process (Linux), 0 elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny random model (smoke test)")
    parser.add_argument("--steps", type=int, default=75)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=None, help="default 640 (32 with --tiny)")
    parser.add_argument("--height", type=int, default=None, help="default 960 (48 with --tiny)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    configs = TINY_CONFIGS if args.tiny else V11_CONFIGS
    width = args.width or (32 if args.tiny else 640)
    height = args.height or (48 if args.tiny else 960)
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as tokenizer_folder:
        pipe = build_pipeline(configs, device, dtype, tokenizer_folder)
    weights = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    print(f"built {'tiny' if args.tiny else 'full-size v1.1'} random model on {device} ({dtype}) "
          f"in {time.perf_counter() - begin:.1f} s; weights {weights / 2**30:.2f} GiB")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")

    frame0, frame1 = disk_frame(0), disk_frame(1)

    def generate(rgb: np.ndarray, anchor=None, steps: int = args.steps) -> np.ndarray:
        return pipe(rgb, steps=steps, width=width, height=height, anchor=anchor)

    generate(frame0, steps=min(3, args.steps))  # warm-up: kernels, allocator
    rows: dict[str, dict] = {}

    def add(name: str, runs: list[tuple[float, int, np.ndarray]], **extra) -> np.ndarray:
        times = [t for t, _, _ in runs]
        rows[name] = dict(seconds=times, median_s=statistics.median(times),
                          peak_gpu_bytes=max(p for _, p, _ in runs), **extra)
        return runs[-1][2]

    off_runs = [timed(lambda: generate(frame1), device) for _ in range(args.repeats)]
    off = add("off", off_runs)
    deterministic = all(np.array_equal(r[2], off) for r in off_runs)

    replayed = {}
    for pinned in (True, False):
        label = "pinned" if pinned else "pageable"
        anchor = TemporalAnchor("record", pin_memory=pinned)
        record_runs, rss_growth = [], []
        for _ in range(args.repeats):
            anchor.clear()
            anchor.set_mode("record")
            rss = rss_bytes()
            record_runs.append(timed(lambda: generate(frame0, anchor), device))
            rss_growth.append(rss_bytes() - rss)
        add(f"record ({label})", record_runs, first_s=record_runs[0][0], record_bytes=anchor.nbytes,
            records=len(anchor), rss_growth_bytes=rss_growth)
        anchor.set_mode("replay")
        replay_runs = [timed(lambda: generate(frame1, anchor), device) for _ in range(args.repeats)]
        replayed[label] = add(f"replay ({label})", replay_runs)
        if pinned:
            reserved = anchor.reserved_bytes
        anchor.clear()

    factor = pipe.vae_scale_factor
    cond = pipe.vae_preprocess.crop
    formula = record_bytes(dict(pipe.unet.config), (height // factor, width // factor),
                           (cond[0] // factor, cond[1] // factor), args.steps, batch=2, bytes_per_value=2)

    base_t, base_m = rows["off"]["median_s"], rows["off"]["peak_gpu_bytes"]
    print(f"\nZero123++ v1.1 ({'tiny' if args.tiny else 'full size'}), {width}x{height}, {args.steps} steps, "
          f"guidance 4.0, median of {args.repeats} after warm-up")
    print(f"{'run':<27}{'s/frame':>9}{'extra s':>9}{'first s':>9}{'peak GPU GiB':>14}{'extra GiB':>11}"
          f"{'records GiB':>13}")
    for name, row in rows.items():
        first = f"{row['first_s']:.2f}" if "first_s" in row else "-"
        records = f"{row['record_bytes'] / 2**30:.3f}" if "record_bytes" in row else "-"
        print(f"{name:<27}{row['median_s']:>9.2f}{row['median_s'] - base_t:>+9.2f}{first:>9}"
              f"{row['peak_gpu_bytes'] / 2**30:>14.2f}{(row['peak_gpu_bytes'] - base_m) / 2**30:>+11.2f}{records:>13}")
    measured = rows["record (pinned)"]["record_bytes"]
    print(f"\nrecords of frame 0: {rows['record (pinned)']['records']} self-attention calls, measured {measured} bytes "
          f"({measured / 2**30:.3f} GiB), formula {formula} bytes ({'equal' if formula == measured else 'DIFFERENT'})")
    print(f"pinned host memory reserved for them: {reserved} bytes ({reserved / 2**30:.3f} GiB)")
    print(f"host RSS growth while recording (pageable): "
          f"{[round(g / 2**30, 2) for g in rows['record (pageable)']['rss_growth_bytes']]} GiB")
    print(f"same seed, repeated frames bit-identical: {deterministic}; "
          f"replays identical (pinned, pageable): "
          f"{all(np.array_equal(replayed['pinned'], r) for r in replayed.values())}")

    if args.json:
        summary = dict(device=str(device), tiny=args.tiny, width=width, height=height, steps=args.steps,
                       repeats=args.repeats, weights_bytes=weights, formula_record_bytes=formula,
                       pinned_reserved_bytes=reserved,
                       deterministic=deterministic, rows=rows)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
