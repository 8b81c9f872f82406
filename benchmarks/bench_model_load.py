"""Benchmark: how long loading the diffusion models takes, as gen_mv.py and main.py load them.

    python benchmarks/bench_model_load.py [--zero123pp Z123PP] [--zero123 Z123XL] [--repeats 3]
        [--warm-up 4] [--guidance-variant "NAME: KEY=VALUE ..." ...]
    (model folders: python -m stag4d.multiview.random_model Z123PP --fp16;
                    python -m guidance.random_model Z123XL --fp16)

Each measurement is a fresh Python process, as a user's command is: the imports (torch, diffusers,
transformers), the start of CUDA (one tensor on the device), then the load itself (with the model
classes' own modules, which diffusers and transformers import on first use), each timed apart; the process's own wall time is the sum plus interpreter start. Rows:

* ``zero123pp``: gen_mv's ``load_pipeline``, with the seconds of each weighted component (read,
  cast, moved to the device);
* ``zero123 guidance``: main.py's Zero123 guidance (``load_guidance``), with the seconds of each
  weighted component's read, the move to the device and the speed options (``load_seconds``);
  with ``--warm-up B`` also the guidance's warm-up as main.py runs it before its first step (a
  step's shapes at batch B: torch.compile from inductor's cache, the CUDA-graph captures), with
  the seconds of its parts. ``--guidance-variant "NAME: guidance_compile_scope=model"`` adds a
  row of the guidance with those settings (main.py's keys, read from configs/stag4d.yaml as
  main.py reads them), alternated with the others.

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

from timing import parse_variant

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: the probe's cwd
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
warm_parts = {}
if sys.argv[1] == "guidance":
    from guidance import GuidanceConfig, load_guidance
    settings, warm_up_batch = json.loads(sys.argv[4]), int(sys.argv[5])
    guide = load_guidance(GuidanceConfig(**settings), device)
    parts = guide.load_seconds
else:
    from stag4d.multiview.pipeline import load_pipeline
    parts, warm_up_batch = load_pipeline(sys.argv[3], device=device).load_seconds, 0
if device.type == "cuda":
    torch.cuda.synchronize()
loaded = time.perf_counter()
if warm_up_batch:
    warm_parts = guide.warm_up(warm_up_batch)
warmed = time.perf_counter()
print("RESULT " + json.dumps({"import": imported - begin, "cuda": started - imported, "load": loaded - started,
                              "parts": parts, "warm_up": warmed - loaded, "warm_parts": warm_parts}))
"""


def measure(kind: str, model: str, device: str, settings: dict, warm_up: int) -> dict:
    begin = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, kind, device, model, json.dumps(settings), str(warm_up)],
                          capture_output=True, text=True, cwd=ROOT)
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
    parser.add_argument("--warm-up", type=int, default=0, metavar="B",
                        help="also time the guidance's warm-up at batch B, as main.py runs it (0: not)")
    parser.add_argument("--guidance-variant", action="append", default=[], metavar="'NAME: KEY=VALUE ...'",
                        help="one more guidance row with these GuidanceConfig settings (repeatable)")
    args = parser.parse_args()
    if not (args.zero123pp or args.zero123):
        parser.error("give --zero123pp DIR, --zero123 DIR or both")
    if args.guidance_variant and not args.zero123:
        parser.error("--guidance-variant needs --zero123 DIR")
    rows = {}
    if args.zero123pp:
        rows["zero123pp"] = ("zero123pp", args.zero123pp, {})
    if args.zero123:
        rows["zero123 guidance"] = ("guidance", args.zero123, guidance_settings(args.zero123, []))
        for text in args.guidance_variant:
            name, overrides = parse_variant(text, "--guidance-variant")
            rows[f"zero123 guidance, {name}"] = ("guidance", args.zero123, guidance_settings(args.zero123, overrides))
    for folder in {folder for _, folder, _ in rows.values()}:
        read_files(folder)
    results: dict[str, list[dict]] = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, (kind, folder, settings) in rows.items():
            warm_up = args.warm_up if kind == "guidance" else 0
            results[name].append(measure(kind, folder, args.device, settings, warm_up))
    print(f"device {args.device}, median of {args.repeats} fresh processes per row"
          + (f", guidance warm-up at batch {args.warm_up}" if args.warm_up else ""))
    print("| row | imports s | CUDA start s | load s | warm-up s | process wall s "
          "| components, warm-up parts (median row) |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        runs = sorted(runs, key=lambda r: r["load"] + r["warm_up"])
        mid = runs[len(runs) // 2]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in {**mid["parts"], **mid["warm_parts"]}.items()) or "-"
        med = {key: statistics.median(r[key] for r in runs) for key in ("import", "cuda", "load", "warm_up", "wall")}
        warm = f"{med['warm_up']:.2f}" if args.warm_up and rows[name][0] == "guidance" else "-"
        print(f"| {name} | {med['import']:.2f} | {med['cuda']:.2f} | {med['load']:.2f} | {warm} | {med['wall']:.2f} "
              f"| {parts} |")
    return 0


def guidance_settings(model: str, overrides: list[str]) -> dict:
    """main.py's guidance section (configs/stag4d.yaml with ``overrides``, read and checked as main.py
    reads them) as a plain dict, for the probe process to build its GuidanceConfig from."""
    from stag4d.config import load_config
    from stag4d.settings import ConfigError, to_container

    try:
        cfg = load_config(os.path.join(ROOT, "configs", "stag4d.yaml"), [f"zero123_model={model}", *overrides],
                          require_path=False)
    except ConfigError as err:  # a wrong key or value, in one line
        sys.exit(f"error: {err}")
    return to_container(cfg.guidance)


if __name__ == "__main__":
    sys.exit(main())
