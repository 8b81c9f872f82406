"""Benchmark: how long loading the diffusion models takes, as gen_mv.py and main.py load them.

    python benchmarks/bench_model_load.py [--zero123pp Z123PP] [--zero123 Z123XL] [--repeats 3]
    (model folders: python -m stag4d.multiview.random_model Z123PP --fp16;
                    python -m guidance.random_model Z123XL --fp16)

Each measurement is a fresh Python process, as a user's command is: the imports (torch, diffusers,
transformers), the start of CUDA (one tensor on the device), then the load itself (with the model
classes' own modules, which diffusers and transformers import on first use), each timed apart; the process's own wall time is the sum plus interpreter start. Rows:

* ``zero123pp``: gen_mv's ``load_pipeline``, with the seconds of each weighted component (read,
  cast, moved to the device);
* ``zero123 guidance``: main.py's Zero123 guidance (``load_guidance``), with the seconds of each
  weighted component's read, the move to the device and the speed options (``load_seconds``).

The rows alternate within each repeat; the model files are read once before the first timed row
(warm page cache, as right after writing or downloading them). Median over ``--repeats``; the
per-component seconds are those of the median row.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROBE = r"""
import json, sys, time
begin = time.perf_counter()
import torch
import diffusers, transformers  # noqa: F401  (what the loaders import first)
imported = time.perf_counter()
device = torch.device(sys.argv[2])
if device.type == "cuda":
    torch.empty(1, device=device); torch.cuda.synchronize()
started = time.perf_counter()
parts = {}
if sys.argv[1] == "guidance":
    from guidance import GuidanceConfig, load_guidance
    parts = load_guidance(GuidanceConfig(zero123_model=sys.argv[3]), device).load_seconds
else:
    from stag4d.multiview.pipeline import load_pipeline
    parts = load_pipeline(sys.argv[3], device=device).load_seconds
if device.type == "cuda":
    torch.cuda.synchronize()
loaded = time.perf_counter()
print("RESULT " + json.dumps({"import": imported - begin, "cuda": started - imported, "load": loaded - started,
                              "parts": parts}))
"""


def measure(kind: str, model: str, device: str) -> dict:
    begin = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, kind, device, model], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    wall = time.perf_counter() - begin
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"error: loading {model} ({kind}) failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "wall": wall}


def read_files(folder: str) -> None:
    """Read every file once, so that the first timed row does not pay for a cold disk alone."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 24):
                    pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zero123pp", help="Zero123++ model folder; row left out without it")
    parser.add_argument("--zero123", help="Zero123 (guidance) model folder; row left out without it")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (args.zero123pp or args.zero123):
        parser.error("give --zero123pp DIR, --zero123 DIR or both")
    rows = {}
    if args.zero123pp:
        rows["zero123pp"] = ("zero123pp", args.zero123pp)
    if args.zero123:
        rows["zero123 guidance"] = ("guidance", args.zero123)
    for _, folder in rows.values():
        read_files(folder)
    results: dict[str, list[dict]] = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, (kind, folder) in rows.items():
            results[name].append(measure(kind, folder, args.device))
    print(f"device {args.device}, median of {args.repeats} fresh processes per row")
    print("| row | imports s | CUDA start s | load s | process wall s | components (median row) |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        runs = sorted(runs, key=lambda r: r["load"])
        mid = runs[len(runs) // 2]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in mid["parts"].items()) or "-"
        med = {key: statistics.median(r[key] for r in runs) for key in ("import", "cuda", "load", "wall")}
        print(f"| {name} | {med['import']:.2f} | {med['cuda']:.2f} | {med['load']:.2f} | {med['wall']:.2f} | {parts} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
