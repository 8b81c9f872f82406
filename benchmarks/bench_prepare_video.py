"""prepare_video's frames written on threads against one by one, side by side in one process.

    python benchmarks/bench_prepare_video.py --input ../shared/data/minions/ref --repeats 3

Times ``prepare_video()`` (imports excluded) with ``WRITE_THREADS`` = 1 and the default,
alternating, and prints the median and each run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from stag4d.data import prepare_video as pv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=os.path.join(REPO, "..", "shared", "data", "minions", "ref"))
    parser.add_argument("--matting", default="none", choices=pv.MATTINGS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    default = pv.WRITE_THREADS
    out = tempfile.mkdtemp(prefix="bench_prepare_video_")
    times: dict[int, list[float]] = {1: [], default: []}
    try:
        for _ in range(args.repeats):
            for threads in times:
                pv.WRITE_THREADS = threads
                shutil.rmtree(os.path.join(out, "bench"), ignore_errors=True)
                start = time.perf_counter()
                pv.prepare_video(args.input, "bench", matting=args.matting, out_root=out)
                times[threads].append(time.perf_counter() - start)
    finally:
        pv.WRITE_THREADS = default
        shutil.rmtree(out, ignore_errors=True)
    print(f"{os.cpu_count()} CPU cores; prepare_video({args.input!r}, matting={args.matting!r}), seconds")
    for threads, values in times.items():
        print(f"WRITE_THREADS={threads}: median {statistics.median(values):.3f}  runs "
              + " ".join(f"{v:.3f}" for v in values))


if __name__ == "__main__":
    main()
