"""A picture of motion between frames: the reference view of trained runs at chosen times, under
the input frames at the same times (issue 22's comparison by eye).

    python benchmarks/time_sheet.py --config configs/demo.yaml --path DATA [--outdir LOGS] \
        --runs OLD NEW [--labels "preset" "new"] --times 2 2.5 3 3.5 4 --out sheet.png [--size 96 --zoom 2]
    (runs: names under --outdir, or run folders)

Columns are times in frame units (3.5 = half way from frame 3 to frame 4, t = 3.5 / T); rows are
the input frame (blank between frames) and then each run's render at that time, from its latest
saved step (``outdir/<run>``). Frames named in the run's ``holdout_frames`` are marked with '*'
(never trained on). A render between two frames should be an in-between pose, not a jump.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from stag4d.config import load_config
from stag4d.data.frames import load_frames
from stag4d.data.video import contact_sheet, to_uint8
from stag4d.evaluation.saved_model import open_saved_model
from stag4d.files import save_image
from stag4d.rasterizer.render import render

BLANK = 235  # grey of the input row's tiles between frames


def centre(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` pixels of a uint8 image [S, S, 3]."""
    border = (image.shape[0] - size) // 2
    return image[border:border + size, border:border + size]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--path", required=True, help="the dataset the runs were trained on")
    parser.add_argument("--outdir", default=".", help="the runs' outdir")
    parser.add_argument("--runs", nargs="+", required=True, help="save_path names under outdir, or run folders")
    parser.add_argument("--labels", nargs="+", help="row labels (default: the run names)")
    parser.add_argument("--times", nargs="+", type=float, required=True, help="times in frame units")
    parser.add_argument("--size", type=int, default=96, help="tile size in pixels")
    parser.add_argument("--zoom", type=float, default=1.0, help="render this much larger and keep the centre")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()
    labels = args.labels or args.runs
    if len(labels) != len(args.runs):
        sys.exit(f"error: {len(labels)} labels for {len(args.runs)} runs: give one per run")

    full = round(args.size * args.zoom)  # rendered size; the centre args.size pixels are kept
    data = load_frames(args.path, ref_size=full, anchor_size=full, require_anchors=False)
    blank = np.full((args.size, args.size, 3), BLANK, dtype=np.uint8)
    rows = [[centre(to_uint8(data.ref_rgb[int(t)]), args.size) if float(t).is_integer() and int(t) < len(data.ref_rgb)
             else blank for t in args.times]]
    held_out: set[int] = set()
    white = torch.ones(3)
    for run in args.runs:
        outdir, name = (os.path.split(os.path.normpath(run)) if os.sep in run else (args.outdir, run))
        cfg = load_config(args.config, [f"path={args.path}", f"outdir={outdir}", f"save_path={name}", "device=cpu"])
        saved = open_saved_model(cfg, None, torch.device("cpu"))
        if saved.trained is not None:
            held_out |= set(saved.trained.data.holdout_frames or [])
        camera = cfg.camera.reference(full)
        times = [t / saved.num_frames for t in args.times]
        with torch.no_grad():
            gaussians = saved.model.gaussians_at_times(times)
            rows.append([centre(to_uint8(render(g, camera.with_time(t), white, backend="torch").image), args.size)
                         for g, t in zip(gaussians, times)])
    columns = [f"{t:g}" + ("*" if float(t).is_integer() and int(t) in held_out else "") for t in args.times]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_image(args.out, contact_sheet(np.stack([np.stack(row) for row in rows]), ["input", *labels], columns))
    print(f"wrote {args.out} ({len(rows)} rows x {len(args.times)} times; * = held out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
