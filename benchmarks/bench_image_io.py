"""Image I/O on threads against one thread, side by side in one process: prepare_video's frame
writes (``prepare_video.WRITE_THREADS``) and load_frames' decoding of the frames and anchors
(``frames.LOAD_THREADS``; main.py, visualize.py and evaluate.py start with it).

    python benchmarks/bench_image_io.py --data ../shared/data/minions --repeats 3

Each is timed (imports excluded) with 1 thread and with the default, alternating; prints the
median and each run, and checks that both give the same result.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import tempfile
import time
from typing import Callable

import torch

from stag4d.data import frames as frames_module
from stag4d.data import prepare_video as pv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compare(name: str, module, attribute: str, run: Callable[[], object], repeats: int) -> dict[int, object]:
    default = getattr(module, attribute)
    times: dict[int, list[float]] = {1: [], default: []}
    results: dict[int, object] = {}
    try:
        for _ in range(repeats):
            for threads in times:
                setattr(module, attribute, threads)
                start = time.perf_counter()
                results[threads] = run()
                times[threads].append(time.perf_counter() - start)
    finally:
        setattr(module, attribute, default)
    for threads, values in times.items():
        print(f"{name}, {attribute}={threads}: median {statistics.median(values):.3f} s  runs "
              + " ".join(f"{v:.3f}" for v in values))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "minions"),
                        help="a dataset folder (ref/ and zero123/)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores, {args.data}")

    out = tempfile.mkdtemp(prefix="bench_image_io_")

    def prepare() -> list[bytes]:
        shutil.rmtree(os.path.join(out, "bench"), ignore_errors=True)
        dataset = pv.prepare_video(os.path.join(args.data, "ref"), "bench", matting="none", out_root=out)
        ref = os.path.join(dataset, "ref")
        return [pathlib.Path(ref, f"{i}_rgba.png").read_bytes() for i in range(len(os.listdir(ref)))]

    try:
        written = compare("prepare_video (32 frames to 512 px)", pv, "WRITE_THREADS", prepare, args.repeats)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"  the same files: {len(set(map(tuple, written.values()))) == 1}")

    loaded = compare("load_frames (512 px frames, 256 px anchors)", frames_module, "LOAD_THREADS",
                     lambda: frames_module.load_frames(args.data, ref_size=512, device="cpu"), args.repeats)
    a, b = loaded.values()
    same = all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("ref_rgb", "ref_mask", "anchor_rgb", "anchor_mask"))
    print(f"  the same tensors: {same}")


if __name__ == "__main__":
    main()
